"""Stage 2: the token cache, with single-flight.

- Bounded (``TtlStore``, TTL per entry): each entry carries its own expiry, min(exp - now, max_ttl)
  for active tokens and the negative TTL for inactive ones. IdP errors are never cached.
- Keyed by a keyed BLAKE2b digest of the token under a per-process random key: the raw token is
  never stored, and the keys in a memory dump cannot be matched against a leaked token list.
- Single-flight: concurrent misses for one token share one IdP call; a caller that goes away
  (client disconnect) does not cancel the call the others wait for.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from .errors import Denial
from .token_info import TokenInfo
from .ttl_cache import TtlStore

Lookup = Literal["hit", "miss", "coalesced"]


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


def _retrieve(task: asyncio.Future[Entry]) -> None:
    if not task.cancelled():
        task.exception()


class TokenCache:
    def __init__(self, max_entries: int, *, timer: Callable[[], float] = time.monotonic) -> None:
        self._secret = os.urandom(32)
        self._keyed = hashlib.blake2b(key=self._secret, digest_size=16)
        self._timer = timer
        self._entries: TtlStore[bytes, Entry] | None = (
            TtlStore(max_entries, _ttu, timer) if max_entries > 0 else None
        )
        self._inflight: dict[bytes, asyncio.Future[Entry]] = {}

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
        try:
            entry = await load()
            if self._entries is not None and entry.expires > self._timer():
                self._entries[key] = entry
            return entry
        finally:
            del self._inflight[key]

    def purge(self, key: bytes) -> bool:
        """Drop one token's entry (revocation events); True when there was one."""
        return self._entries is not None and self._entries.pop(key, None) is not None

    def clear(self) -> int:
        count = len(self)
        if self._entries is not None:
            self._entries.clear()
        return count
