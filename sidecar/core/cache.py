"""Stage 2: the token cache. It owns every rule about what is kept and for how long.

- **TTL** (set here, at fill, from the answer): an active token stays ``min(exp - now,
  cache.max_ttl)``; an inactive one ``cache.negative_ttl``. IdP errors are never cached. An
  answer that is already expired is not stored.
- **At the edge** (``response.edge_ttl``): the last whole second a proxy's own decision cache may
  answer with an allow (:func:`edge_second`) is set at fill too, never past the entry's deadline;
  never for a DPoP-bound token, nor for a stale answer.
- **Two stores**: active answers and inactive answers apart (``cache.max_entries`` and
  ``cache.negative_max_entries``), so a flood of random tokens fills only the inactive store and
  can never evict a valid cached token. Each store drops its oldest entry when full.
- **Keys** are a keyed BLAKE2b digest of the token under a per-process random key (in a fleet,
  the fleet's digest key, so that a purge names one entry on every replica): the raw token is
  never stored, and a memory dump cannot be matched against a leaked token list.
- **Single-flight**: concurrent misses for one token share one IdP call
  (:class:`~sidecar.support.singleflight.SingleFlight`).
- **Routes**: with several issuers, an opaque token is introspected at the issuers the request's
  policy names (its ``route``), so an inactive answer says "unknown to these issuers" only: it is
  kept, and its call shared, under the key and the route; an active answer is one issuer's, which
  every policy then judges, and is kept under the key alone. The default route is empty: with one
  issuer every key is as it was.
- **Stale-if-error** (off unless ``cache.stale_if_error`` > 0, in the spirit of RFC 5861 §4): an
  active, bound answer that passed the static policy is also kept until ``stale_if_error``
  seconds past its expiry, never past ``exp``. It is used only when the IdP itself failed
  (``IdpUnavailable.allows_stale``): never while the IdP answers — not when the sidecar's own
  limits refused the call (``saturated``, a per-source limit) — and any fresh answer for the token
  (inactive: revoked) drops it.
- **Purge**: what a :class:`~sidecar.core.purges.Purge` names — one key, or a scan for a
  ``token_hash`` (rare admin calls pay, the hot path and memory do not), or all. A purge also
  stops loads in flight from filling the cache with an answer that may predate the revocation.
- **Revoke** (security events, docs/events.md): purge every answer a
  :class:`~sidecar.core.revocation.Selector` names (a ``jti``, a subject, a client), found through
  the index of core/cache_index.py, and remember it (:class:`~sidecar.core.revocation.Revocations`)
  so that the decision refuses such a token when it is filled again (:meth:`TokenCache.revoked`).
- **A reload** builds a new cache for the new configuration; when the IdP settings did not change
  (the runtime decides), it keeps the replaced cache as ``previous``, under the same key: a miss of
  the default route asks it first (:meth:`TokenCache.carried`) and reuses the IdP's answer until
  that answer's own deadline, judged afresh under the new policy (and the remembered
  revocations, which a reload hands over). So a reload costs no burst of IdP calls. Purges and
  revocations reach both; the previous cache is let go once everything in it has expired.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from operator import attrgetter, itemgetter
from typing import Literal

from sidecar.config import CacheConfig
from sidecar.core.cache_index import CacheIndex
from sidecar.core.entry import Entry
from sidecar.core.errors import IdpUnavailable
from sidecar.core.purges import Purge
from sidecar.core.revocation import Revocations, Selector
from sidecar.core.token_info import TokenInfo
from sidecar.support.singleflight import SingleFlight
from sidecar.support.ttl_cache import TtlStore

Lookup = Literal["hit", "miss", "coalesced", "stale"]
_expires = attrgetter("expires")  # an entry's deadline (time.monotonic)
_stale_until = itemgetter(1)  # a kept stale copy: (entry, until)
Timer = Callable[[], float]


def answer_ttl(info: TokenInfo, config: CacheConfig, now: float) -> float:
    """Seconds an answer may be reused from wall-clock ``now``: an inactive one
    ``negative_ttl``; an active one never past ``exp``, never past ``max_ttl``."""
    if not info.active:
        return config.negative_ttl
    return config.max_ttl if info.exp is None else min(config.max_ttl, info.exp - now)


def edge_second(info: TokenInfo, deadline: float) -> int:
    """The last whole Unix second a proxy may answer with this allow from a cache of its own
    (nginx keeps an entry until its ``X-Accel-Expires: @second`` is over): the second before the
    wall-clock ``deadline`` of the entry, so never past it nor ``exp``. 0 (never) for an inactive
    token, and for a DPoP-bound one: each of its requests needs a proof of its own (RFC 9449 §4.3)."""
    if not info.active or info.cnf_jkt is not None:
        return 0
    return max(math.floor(deadline) - 1, 0)


class TokenCache:
    def __init__(self, config: CacheConfig, *, timer: Timer = time.monotonic, clock: Timer = time.time,
                 secret: bytes | None = None, revocations: Revocations | None = None, index: bool = True,
                 previous: TokenCache | None = None) -> None:
        """``index``: keep the index of core/cache_index.py (revocations then find their answers
        without a scan, at some memory per token: docs/events.md); ``previous``: the cache of the
        configuration this one replaces (same IdP settings), whose key is kept unless ``secret`` (a
        fleet's digest key) is given."""
        if previous is not None:
            secret = secret or previous.secret
            previous._previous = None  # one generation back at most
        self._previous: TokenCache | None = previous
        self._previous_until = timer() + max(config.max_ttl, config.negative_ttl)
        self._secret = secret or os.urandom(32)
        self._keyed = hashlib.blake2b(key=self._secret, digest_size=16)
        self._config = config
        self._timer = timer  # monotonic: deadlines
        self._clock = clock  # wall clock: exp
        on = config.max_entries > 0
        self._active: TtlStore[bytes, Entry] | None = TtlStore(config.max_entries, _expires, timer) if on else None
        self._inactive: TtlStore[bytes, Entry] | None = (
            TtlStore(config.negative_max_entries, _expires, timer) if on and config.negative_max_entries > 0 else None
        )
        self._stale: TtlStore[bytes, tuple[Entry, float]] | None = (
            TtlStore(config.max_entries, _stale_until, timer) if on and config.stale_if_error > 0 else None
        )
        self._flights: SingleFlight[bytes, Entry] = SingleFlight()
        self._generation = 0  # bumped by every purge
        self._index = CacheIndex(config.max_entries) if on and index else None
        # "is None", not "or": an empty Revocations is falsy, and the configured one must be kept
        self.revocations = Revocations(10_000, 3600.0, timer) if revocations is None else revocations

    @property
    def secret(self) -> bytes:
        return self._secret

    def carried(self, key: bytes) -> tuple[TokenInfo, float] | None:
        """The replaced configuration's cached answer for ``key`` and its wall-clock deadline; None
        when there is none (or no longer a previous cache)."""
        previous = self._previous
        if previous is None:
            return None
        if self._timer() > self._previous_until:
            self._previous = None  # everything it held has expired
            return None
        entry = previous.get(key)
        if entry is None:
            return None
        return entry.info, min(entry.until, self._clock() + entry.expires - self._timer())

    def key(self, token: str) -> bytes:
        keyed = self._keyed.copy()  # the key block is absorbed once, not per token (hot path)
        keyed.update(token.encode())
        return keyed.digest()

    def __len__(self) -> int:
        return sum(len(store) for store in (self._active, self._inactive) if store is not None)

    def get(self, key: bytes, route: bytes = b"") -> Entry | None:
        active = self._active
        if active is None:
            return None
        entry = active.get(key)
        if entry is None and self._inactive is not None:
            return self._inactive.get(key + route if route else key)
        return entry

    async def get_or_load(self, key: bytes, load: Callable[[], Awaitable[Entry]],
                          route: bytes = b"") -> tuple[Entry, Lookup]:
        """The cached entry, or the result of one shared ``load()`` call (stored by its TTL)."""
        entry = self.get(key, route)
        if entry is not None:
            return entry, "hit"
        flight = key + route if route else key
        entry, started = await self._flights.run(flight, lambda: self._fill(key, load, route))
        return entry, "miss" if started else "coalesced"

    async def _fill(self, key: bytes, load: Callable[[], Awaitable[Entry]], route: bytes = b"") -> Entry:
        generation = self._generation
        entry = await load()
        now, wall = self._timer(), self._clock()
        ttl = min(answer_ttl(entry.info, self._config, wall), entry.until - wall)  # never past the source's until
        entry.expires = now + ttl
        entry.edge = edge_second(entry.info, wall + ttl)
        if generation != self._generation:
            return entry  # purged meanwhile: the answer may predate a revocation
        store = self._active if entry.info.active else self._inactive
        if store is not None and entry.expires > now:
            store[key if entry.info.active or not route else key + route] = entry
            if not entry.info.active and self._active is not None:
                self._active.pop(key)
            elif self._index is not None:
                self._indexed(key, entry.info, self._index)
        if self._stale is not None:
            self._keep_stale(key, entry, self._stale)
        return entry

    def _keep_stale(self, key: bytes, entry: Entry, stale: TtlStore[bytes, tuple[Entry, float]]) -> None:
        """Remember an active, bound, statically allowed answer; forget the token otherwise."""
        info = entry.info
        until = entry.expires + self._config.stale_if_error
        if info.exp is not None:
            until = min(until, self._timer() + (info.exp - self._clock()))  # never past exp
        if info.active and info.bound and entry.denial is None and until > self._timer():
            stale[key] = (entry, until)
        else:
            stale.pop(key)

    def stale(self, key: bytes, failure: IdpUnavailable) -> Entry | None:
        """The last good answer for a token, when ``failure`` says the IdP itself is failing."""
        if self._stale is None or not failure.allows_stale:
            return None
        kept = self._stale.get(key)
        # An answer the IdP did not give just now: a copy no proxy may keep (its views computed afresh).
        return None if kept is None else dataclasses.replace(kept[0], edge=0, views=None)

    def purge(self, key: bytes) -> bool:
        """Drop one token's answers (revocation events); True when there was one."""
        self._generation += 1
        found = [store.pop(key) is not None for store in self._stores() if store is not None]
        if self._previous is not None:
            found.append(self._previous.purge(key))
        return any(found)

    def drop(self, purge: Purge) -> int:
        """Drop every answer ``purge`` names; the count of tokens dropped."""
        if purge.kind == "all":
            return self.clear()
        if purge.kind == "key":
            return int(self.purge(bytes.fromhex(purge.value)))
        return self._drop_matching(purge)

    def _drop_matching(self, purge: Purge) -> int:
        """Drop every answer ``purge`` names by what an entry holds (its ``token_hash``); the count.

        A linear scan: purges by hash are rare admin calls, and this keeps the hit path and the
        memory per entry as they are.
        """
        keys = {key for key, entry in self._items() if purge.matches(key, entry.token_hash, entry.info)}
        for key in keys:
            self.purge(key)
        self._generation += 1
        carried = 0 if self._previous is None else self._previous._drop_matching(purge)
        return max(len(keys), carried)

    def _indexed(self, key: bytes, info: TokenInfo, index: CacheIndex) -> None:
        index.add(key, info)
        if index.full():
            index.rebuild((k, e.info) for k, e in self._items())

    def revoke(self, selector: Selector, at: float) -> int:
        """Purge every answer ``selector`` names and remember it as revoked at wall-clock ``at``;
        the count purged."""
        self.revocations.add(selector, at)
        self._generation += 1
        previous = self._previous  # the answers a reload may still reuse
        carried = 0 if previous is None else sum(previous.purge(key) for key, _ in previous.matching(selector))
        return max(sum(self.purge(key) for key, _ in self.matching(selector)), carried)

    def matching(self, selector: Selector) -> list[tuple[bytes, Entry]]:
        """The answers cached now (stale-if-error copies too) that ``selector`` names: through the
        index, else by a scan (a replica told by the fleet, whose own revocations are off)."""
        if self._index is None:
            return [(key, entry) for key, entry in self._items() if selector.matches(key, entry.info)]
        found = []
        for key in self._index.candidates(selector.kind, selector.value):
            entry = self.get(key)
            kept = self._stale.get(key) if self._stale is not None else None
            current = entry or (kept[0] if kept is not None else None)
            if current is not None and selector.matches(key, current.info):
                found.append((key, current))
        return found

    def revoked(self, key: bytes, info: TokenInfo) -> bool:
        """Whether a remembered revocation refuses this answer as it fills the cache."""
        return self.revocations.revoked(key, info)

    def clear(self) -> int:
        self._generation += 1
        if self._previous is not None:
            self._previous.clear()
        count = len(self)
        for store in self._stores():
            if store is not None:
                store.clear()
        return count

    def _stores(self) -> tuple[TtlStore[bytes, Entry] | TtlStore[bytes, tuple[Entry, float]] | None, ...]:
        return self._active, self._inactive, self._stale

    def _items(self) -> Iterator[tuple[bytes, Entry]]:
        for store in (self._active, self._inactive):
            if store is not None:
                for key in list(store):
                    entry = store.get(key)
                    if entry is not None:
                        yield key, entry
        if self._stale is not None:
            for key in list(self._stale):
                kept = self._stale.get(key)
                if kept is not None:
                    yield key, kept[0]
