"""One bounded memo for every cache of derived values (certificate thumbprints, proxy checks,
rendered answers, shared claim values).

Bounded by entries and, where values vary in size, by bytes: a client that sends many distinct
large values (certificate headers of 45 KB each) must not grow memory past a configured figure.
When full, the oldest entries go first (insertion order, no bookkeeping on a hit: a hot value is
recomputed at most once per cycle through the memo). Not ``cachetools.FIFOCache``: it bounds one
size (entries or bytes, not both), and its ``get`` is a Python method (148 ns a hit) where this
one is the dict's own (39 ns).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Memo(Generic[K, V]):
    """``get``/``put`` with a bound on entries and, with ``size_of``, on their total bytes."""

    __slots__ = ("_bytes", "_data", "_max_bytes", "_max_entries", "_size_of", "get")

    def __init__(self, max_entries: int, *, max_bytes: int = 0,
                 size_of: Callable[[K, V], int] | None = None) -> None:
        if max_bytes and size_of is None:
            raise ValueError("max_bytes needs size_of")
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._size_of = size_of if max_bytes else None
        self._data: dict[K, V] = {}
        self._bytes = 0
        # The dict's own get, bound once: a lookup on the hot path runs no Python frame of ours.
        self.get: Callable[[K], V | None] = self._data.get

    def __len__(self) -> int:
        return len(self._data)

    @property
    def bytes(self) -> int:
        """The accounted size of what is held (0 when the memo is bounded by entries only)."""
        return self._bytes

    def values(self) -> Iterator[V]:
        return iter(list(self._data.values()))

    def items(self) -> Iterator[tuple[K, V]]:
        """Oldest first (a copy: the memo may change while it is read)."""
        return iter(list(self._data.items()))

    def put(self, key: K, value: V) -> V:
        """Remember ``value`` (unless it alone exceeds the byte bound) and return it."""
        data = self._data
        if key in data:
            self._forget(key)
        size = 0
        if self._size_of is not None:
            size = self._size_of(key, value)
            if size > self._max_bytes:
                return value  # never held: it would evict everything else
            while data and self._bytes + size > self._max_bytes:
                self._forget(next(iter(data)))
        while data and len(data) >= self._max_entries:
            self._forget(next(iter(data)))
        data[key] = value
        self._bytes += size
        return value

    def _forget(self, key: K) -> None:
        value = self._data.pop(key)
        if self._size_of is not None:
            self._bytes -= self._size_of(key, value)

    def clear(self) -> None:
        self._data.clear()
        self._bytes = 0


def text_size(value: object) -> int:
    """A cheap estimate of the bytes a claim value holds: characters of its strings plus overhead."""
    if isinstance(value, str):
        return 56 + len(value)
    if isinstance(value, tuple | frozenset | list):
        return 64 + sum(text_size(v) for v in value)
    return 64
