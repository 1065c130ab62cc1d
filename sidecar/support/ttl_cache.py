"""The store behind the token cache: bounded, and each entry expiring at its own deadline.

A hit is one dict lookup and one clock read: 0.19 µs against 1.17 µs for
``cachetools.TLRUCache.get``, and 187 bytes less per cached token (``bench/memory.py --tokens
100000``: 1 048 against 1 235; no per-item expiry object, heap slot, size map or recency links):
why the project does not use cachetools. Expired entries are dropped when read. When the store
is full, the oldest inserted entry goes first (FIFO, not LRU: no bookkeeping on a hit; with TTLs
bounded by ``cache.max_ttl`` a hot token is re-fetched at most once per TTL either way).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlStore(Generic[K, V]):
    __slots__ = ("_data", "_deadline", "_order", "_timer", "maxsize")

    def __init__(self, maxsize: int, deadline: Callable[[V], float], timer: Callable[[], float]) -> None:
        """``deadline``: a value's expiry on ``timer``'s clock (an ``operator.attrgetter`` or
        ``itemgetter`` is a C call on the hit path)."""
        self.maxsize = maxsize
        self._deadline = deadline
        self._timer = timer
        self._data: dict[K, V] = {}
        self._order: deque[K] = deque()  # insertion order, for eviction (may hold stale keys)

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[K]:
        """The keys, expired ones included (callers ``get`` each; purges scan this way)."""
        return iter(self._data)

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None and self._deadline(value) <= self._timer():
            del self._data[key]
            return None
        return value

    def __setitem__(self, key: K, value: V) -> None:
        data, order = self._data, self._order
        if key not in data:
            while len(data) >= self.maxsize and order:
                data.pop(order.popleft(), None)
            order.append(key)
            if len(order) > 2 * self.maxsize + 16:  # purged keys left behind: rebuild once in a while
                self._order = deque(k for k in order if k in data)
        data[key] = value

    def pop(self, key: K, default: V | None = None) -> V | None:
        return self._data.pop(key, default)

    def clear(self) -> None:
        self._data.clear()
        self._order.clear()
