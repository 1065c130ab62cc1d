"""Stage 2: the token cache, with single-flight.

- Bounded (``TtlStore``, TTL per entry): each entry carries its own expiry, min(exp - now, max_ttl)
  for active tokens and the negative TTL for inactive ones. IdP errors are never cached.
- Keyed by a keyed BLAKE2b digest of the token under a per-process random key: the raw token is
  never stored, and the keys in a memory dump cannot be matched against a leaked token list.
- Single-flight: concurrent misses for one token share one IdP call; a caller that goes away
  (client disconnect) does not cancel the call the others wait for.
- Stale-if-error (off unless ``stale_if_error`` > 0, in the spirit of RFC 5861 §4): an entry for
  an active, bound token is also kept in a second TLRU until ``stale_if_error`` seconds past its
  expiry, never past ``exp``. Only a lookup whose IdP call failed reads it; any fresh answer for
  the token (e.g. inactive: revoked) replaces or drops it. A normal hit never touches it.
- Purge (revocation events): by key, by ``token_hash`` (a scan: rare admin calls pay, the hot
  path and memory do not), or all. A purge also stops loads in flight from filling the cache
  with an answer that may predate the revocation.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from cachetools import TLRUCache

from sidecar.core.errors import Denial
from sidecar.core.token_info import TokenInfo
from sidecar.support.ttl_cache import TtlStore

Lookup = Literal["hit", "miss", "coalesced", "stale"]


@dataclass(frozen=True, slots=True)
class Entry:
    """A token's cached verdict: everything a hit needs, computed once at fill time."""

    info: TokenInfo
    headers: Mapping[str, str]  # response.CredentialHeaders
    denial: Denial | None  # inactive / issuer / audience: independent of the request
    scope_denial: Denial | None
    token_hash: str  # for logs; never the token
    expires: float  # time.monotonic() deadline


def _ttu(_key: bytes, entry: Entry, _now: float) -> float:
    return entry.expires


def _stale_ttu(_key: bytes, value: tuple[Entry, float], _now: float) -> float:
    return value[1]


def _retrieve(task: asyncio.Future[Entry]) -> None:
    if not task.cancelled():
        task.exception()


class TokenCache:
    def __init__(self, max_entries: int, *, timer: Callable[[], float] = time.monotonic,
                 stale_if_error: float = 0.0) -> None:
        self._secret = os.urandom(32)
        self._keyed = hashlib.blake2b(key=self._secret, digest_size=16)
        self._timer = timer
        self._entries: TtlStore[bytes, Entry] | None = (
            TtlStore(max_entries, _ttu, timer) if max_entries > 0 else None
        )
        self._inflight: dict[bytes, asyncio.Future[Entry]] = {}
        self._stale_window = stale_if_error
        self._stale: TLRUCache[bytes, tuple[Entry, float]] | None = (
            TLRUCache(maxsize=max_entries, ttu=_stale_ttu, timer=timer)
            if max_entries > 0 and stale_if_error > 0 else None
        )
        self._generation = 0  # bumped by every purge

    def key(self, token: str) -> bytes:
        keyed = self._keyed.copy()  # the key block is absorbed once, not per token (hot path)
        keyed.update(token.encode())
        return keyed.digest()

    def __len__(self) -> int:
        return 0 if self._entries is None else len(self._entries)

    def get(self, key: bytes) -> Entry | None:
        return None if self._entries is None else self._entries.get(key)

    async def get_or_load(self, key: bytes, load: Callable[[], Awaitable[Entry]]) -> tuple[Entry, Lookup]:
        """The cached entry, or the result of one shared ``load()`` call."""
        entry = self.get(key)
        if entry is not None:
            return entry, "hit"
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending), "coalesced"
        task = asyncio.ensure_future(self._fill(key, load))
        task.add_done_callback(_retrieve)
        self._inflight[key] = task
        return await asyncio.shield(task), "miss"

    async def _fill(self, key: bytes, load: Callable[[], Awaitable[Entry]]) -> Entry:
        generation = self._generation
        try:
            entry = await load()
            if generation != self._generation:
                return entry  # purged meanwhile: the answer may predate a revocation
            if self._entries is not None and entry.expires > self._timer():
                self._entries[key] = entry
            if self._stale is not None:
                self._keep_stale(key, entry, self._stale)
            return entry
        finally:
            del self._inflight[key]

    def _keep_stale(self, key: bytes, entry: Entry, stale: TLRUCache[bytes, tuple[Entry, float]]) -> None:
        """Remember an active, bound answer for stale-if-error; forget the token otherwise."""
        info = entry.info
        until = entry.expires + self._stale_window
        if info.exp is not None:
            until = min(until, self._timer() + (info.exp - time.time()))  # never past exp
        if info.active and info.bound and entry.denial is None and until > self._timer():
            stale[key] = (entry, until)
        else:
            stale.pop(key, None)

    def stale(self, key: bytes) -> Entry | None:
        """The last active, bound answer for a token, while within the stale-if-error window."""
        if self._stale is None:
            return None
        kept = self._stale.get(key)
        return None if kept is None else kept[0]

    def purge(self, key: bytes) -> bool:
        """Drop one token's entry (revocation events); True when there was one."""
        self._generation += 1
        found = self._entries is not None and self._entries.pop(key, None) is not None
        return (self._stale is not None and self._stale.pop(key, None) is not None) or found

    def purge_hash(self, hashed: str) -> int:
        """Drop every entry whose ``token_hash`` (the 12-hex log value) is ``hashed``; the count.

        A linear scan: purges are rare and this keeps the hit path and the memory per entry as
        they are (no second index to keep in step with TLRU evictions).
        """
        keys = {key for key, entry in self._items() if entry.token_hash == hashed}
        for key in keys:
            self.purge(key)
        self._generation += 1
        return len(keys)

    def _items(self) -> Iterator[tuple[bytes, Entry]]:
        for key in list(self._entries or ()):
            entry = self._entries.get(key) if self._entries is not None else None
            if entry is not None:
                yield key, entry
        for key in list(self._stale or ()):
            kept = self._stale.get(key) if self._stale is not None else None
            if kept is not None:
                yield key, kept[0]

    def clear(self) -> int:
        self._generation += 1
        count = len(self)
        if self._entries is not None:
            self._entries.clear()
        if self._stale is not None:
            self._stale.clear()
        return count
