"""The cache's index by what a revocation names (core/revocation.py): ``jti``, ``sub``, ``email``
and ``client_id`` → the cache keys of the answers that carry it, so that a revocation purges a
subject's or a client's answers without scanning the cache (docs/events.md).

The hot path never reads it; each filled answer adds its values (the strings are the answer's own,
shared). Entries leave the cache without telling the index (eviction, expiry, purges), so a lookup
returns candidates the caller checks against the live answer, and when the index holds more than
twice the references of the live answers at its last rebuild (at least twice ``cache.max_entries``)
it is rebuilt from the live answers: bounded by a few references per cacheable answer, amortized
O(1) per fill.
"""

from __future__ import annotations

from collections.abc import Iterable

from sidecar.core.revocation import Kind, values
from sidecar.core.token_info import TokenInfo

Keys = bytes | list[bytes]  # one key (most subjects hold one token) or several


class CacheIndex:
    __slots__ = ("_base", "_by", "_limit", "_refs")

    def __init__(self, max_entries: int) -> None:
        self._by: dict[Kind, dict[str, Keys]] = {"jti": {}, "sub": {}, "email": {}, "client_id": {}}
        self._base = 2 * max_entries + 1024
        self._limit = self._base
        self._refs = 0

    def __len__(self) -> int:
        """References held (a measure of its memory)."""
        return self._refs

    def add(self, key: bytes, info: TokenInfo) -> None:
        for kind, value in values(info):
            table = self._by[kind]
            held = table.get(value)
            if held is None:
                table[value] = key
            elif isinstance(held, bytes):
                if held == key:
                    continue
                table[value] = [held, key]
            elif key in held[-4:]:  # a refill of a recent key adds nothing
                continue
            else:
                held.append(key)
            self._refs += 1

    def full(self) -> bool:
        """Time to rebuild from the live answers (:meth:`rebuild`)."""
        return self._refs > self._limit

    def rebuild(self, live: Iterable[tuple[bytes, TokenInfo]]) -> None:
        for table in self._by.values():
            table.clear()
        self._refs = 0
        for key, info in live:
            self.add(key, info)
        # Twice what the live answers hold (up to five references each): a rebuild per that many fills.
        self._limit = max(self._base, 2 * self._refs)

    def candidates(self, kind: Kind, value: str) -> list[bytes]:
        """Keys that carried ``value`` as ``kind`` when filled (some may be gone or refilled)."""
        held = self._by[kind].get(value) if kind != "key" else None
        if held is None:
            return [bytes.fromhex(value)] if kind == "key" and _is_key(value) else []
        return [held] if isinstance(held, bytes) else list(dict.fromkeys(held))


def _is_key(value: str) -> bool:
    try:
        return len(bytes.fromhex(value)) == 16
    except ValueError:
        return False
