"""The fleet's second cache level on Redis (:class:`~sidecar.core.ports.SharedAnswers`).

On a miss in memory (a hit never gets here):

1. **Read** the token's sealed value; an answer that opens is used until its own expiry — unless
   its IdP call began before a purge this replica remembers for it, or before its floor (it may
   have missed purges: it just subscribed, or is not subscribed now; core/purges.py). A Redis
   writer can put back any value it once read; such a value is refused, deleted and asked again.
2. Otherwise take the token's **lock** (``SET PX``, a little longer than ``idp.timeout``): the
   holder asks the IdP and writes the sealed answer with the TTL the cache would give it (never
   past ``exp``; inactive answers for ``negative_ttl``) — in one script that writes only while the
   lock is still its own, so a purge that deleted the lock meanwhile wins.
3. The others **poll** the value (2 ms, doubling to 25 ms) for at most ``fleet.lock_wait``; then
   the lock is taken over if the same holder still has it (a holder that died, or a lock a
   writer planted, costs one wait, not one per miss); a lock no replica could have set (no
   expiry, or longer than ours) is taken at once.

Redis failing never allows: an error, a command slower than ``fleet.timeout`` or a value that
does not open is a miss (counted), and the IdP answers as without a fleet. After
``fleet.breaker_failures`` consecutive failures Redis is skipped for ``fleet.breaker_open``
seconds, then tried again. A value refused twice in one miss (a writer planting it again at once)
is not read a third time: the IdP is asked.

Purges (delete from Redis, publish to every replica) are purges.py's, on this store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Awaitable
from typing import TypeVar

from prometheus_client import Counter, Gauge

from sidecar.config import KEY, CacheConfig, Config, FleetConfig
from sidecar.core.cache import answer_ttl
from sidecar.core.ports import Verify
from sidecar.core.purges import PurgeMemory
from sidecar.core.token_info import TokenInfo
from sidecar.fleet.client import Client, connect
from sidecar.fleet.codec import decode, encode
from sidecar.fleet.seal import Names, Sealer, Tampered, read_material
from sidecar.support import tracing
from sidecar.support.breaker import Breaker
from sidecar.support.logs import token_hash
from sidecar.support.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")
POLL_FIRST, POLL_MAX = 0.002, 0.025

# The value; else 2: not a string (planted); else 1: the lock taken; else 3: a lock taken over (a
# planted one: not a string, no expiry or longer than ours; or the holder ARGV[3] we waited for);
# else {0, holder}: someone else's lock.
_READ_OR_LOCK = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'string' then return redis.call('GET', KEYS[1]) end
if kind ~= 'none' then return 2 end
local lock = redis.call('TYPE', KEYS[2])['ok']
if lock == 'none' then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return 1
end
local holder = ''
if lock == 'string' then holder = redis.call('GET', KEYS[2]) end
local ttl = redis.call('PTTL', KEYS[2])
if lock ~= 'string' or holder == ARGV[3] or ttl < 0 or ttl > tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return 3
end
return {0, holder}
"""
_OURS = "redis.call('TYPE', KEYS[1])['ok'] == 'string' and redis.call('GET', KEYS[1]) == ARGV[1]"
# Write the answer only while the lock is still ours (a purge deletes it), then free the lock.
_FILL = f"""
if {_OURS} then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""
_RELEASE = f"if {_OURS} then return redis.call('DEL', KEYS[1]) end return 0"


class RedisDown(Exception):
    """Redis failed, was slower than ``fleet.timeout``, or the breaker is open."""


class FleetMetrics:
    def __init__(self, metrics: Metrics) -> None:
        self.events = metrics.shared(Counter, "sidecar_fleet", "Fleet events: hit, miss, waited, wait_expired, "
                                     "lock_taken, tampered, predates_purge, error, bypass, fill_dropped, purge_sent, "
                                     "purge_received, resubscribed, foreign", ["event"])
        self.breaker = metrics.shared(Gauge, "sidecar_fleet_breaker_open", "1 while Redis is skipped after failures")
        self._children: dict[str, Counter] = {}

    def event(self, name: str) -> None:
        child = self._children.get(name)
        if child is None:
            child = self._children[name] = self.events.labels(name)
        child.inc()


class Fleet:
    """Shared answers, fleet-wide single-flight and purges through one Redis (or Cluster, Sentinel)."""

    def __init__(self, config: Config, metrics: Metrics, redis: Client | None = None) -> None:
        f: FleetConfig = config.fleet
        self.names = Names(read_material(KEY.fleet.secret_file, f.secret_file), f.prefix)
        previous = f.previous_seal_key_file
        self.sealer = Sealer(read_material(KEY.fleet.seal_key_file, f.seal_key_file),
                             read_material(KEY.fleet.previous_seal_key_file, previous) if previous else None)
        self.redis: Client = redis if redis is not None else connect(f)
        self.metrics = FleetMetrics(metrics)
        self.breaker = Breaker(f.breaker_failures, f.breaker_open)
        self.metrics.breaker.set_function(lambda: 1 if self.breaker.is_open else 0)
        self._cache_config: CacheConfig = config.cache
        # Purges seen, kept as long as an answer given before one may live (its IdP call included).
        lives = max(config.cache.max_ttl, config.cache.negative_ttl)
        # The longest this replica reuses a shared answer after its IdP call began, whatever the
        # value says (a replica with a longer cache.max_ttl sealed it): within the purges' memory.
        self._longest = lives + config.idp.timeout
        self.memory = PurgeMemory(lives + 2 * config.idp.timeout + f.clock_skew + 1.0)
        self.subscribed = False  # purges.py: hearing the channel now (else purges may be missed)
        self.skew = f.clock_skew
        self.timeout = f.timeout
        self._wait = min(f.lock_wait, config.idp.timeout)
        self._lock_ms = math.ceil((config.idp.timeout + 4 * f.timeout) * 1000)
        self._read_or_lock = self.redis.register_script(_READ_OR_LOCK)
        self._fill_script = self.redis.register_script(_FILL)
        self._release = self.redis.register_script(_RELEASE)

    @property
    def digest_key(self) -> bytes:
        return self.names.digest_key

    # -- the second cache level ------------------------------------------------------------------

    async def load(self, key: bytes, token: str, verify: Verify) -> tuple[TokenInfo, float]:
        if not self.breaker.allows():
            self.metrics.event("bypass")
            return await verify(), math.inf
        hashed = token_hash(token)
        name, lock = self.names.value(key), self.names.lock(key)
        owner = os.urandom(16)
        loop = asyncio.get_running_loop()
        deadline, delay, waited, refused = loop.time() + self._wait, POLL_FIRST, False, False
        holder = b""  # the holder we waited for, once the wait is over: its lock is taken over
        try:
            while True:
                # One round trip, atomic: the value, or the lock taken; a holder that filled and
                # freed the lock between a read and a lock attempt cannot be missed.
                got = await self.call(self._read_or_lock(keys=[name, lock], args=[owner, self._lock_ms, holder]))
                if isinstance(got, bytes) or got == 2:
                    found = self._open(name, got if isinstance(got, bytes) else b"", key, hashed)
                    if found is not None:
                        self.metrics.event("waited" if waited else "hit")
                        return found
                    if refused:  # planted again at once: not read a third time
                        return await verify(), math.inf
                    refused = True
                    await self.call(self.redis.delete(name))  # not ours, expired or purged: refill it
                    continue
                if got in (1, 3):
                    if got == 3:
                        self.metrics.event("lock_taken")
                    break
                if holder:  # the lock changed hands while we took it over: ask the IdP ourselves
                    self.metrics.event("wait_expired")
                    return await verify(), math.inf
                if loop.time() + delay > deadline:
                    holder = got[1]  # next round: take the lock if it is still theirs
                    continue
                waited = True
                await asyncio.sleep(delay)
                delay = min(2 * delay, POLL_MAX)
        except RedisDown:
            return await verify(), math.inf
        self.metrics.event("miss")
        return await self._fill(name, lock, owner, verify)

    def _open(self, name: str, blob: bytes, key: bytes, hashed: str) -> tuple[TokenInfo, float] | None:
        """A shared answer that opens, has not expired and predates no purge this replica knows
        of; None (a miss, counted) otherwise."""
        try:
            info, until, began = decode(self.sealer.open(name.encode(), blob))
        except Tampered as exc:
            self.metrics.event("tampered")
            log.warning("fleet value refused", extra={"reason": "tampered", "detail": str(exc)})
            return None
        until = min(until, began + self._longest)
        if until <= time.time():
            return None
        if not self.subscribed or self.memory.refuses(key, hashed, info, began, self.skew):
            self.metrics.event("predates_purge")
            return None
        return info, until

    async def _fill(self, name: str, lock: str, owner: bytes, verify: Verify) -> tuple[TokenInfo, float]:
        began = time.time()  # before the IdP call: an answer begun before a purge is refused after it
        try:
            info = await verify()
        except BaseException:
            with contextlib.suppress(RedisDown):
                await self.call(self._release(keys=[lock], args=[owner]))
            raise
        now = time.time()
        ttl = answer_ttl(info, self._cache_config, now)
        with contextlib.suppress(RedisDown):
            if ttl >= 0.001:
                blob = self.sealer.seal(name.encode(), encode(info, now + ttl, began))
                written = await self.call(self._fill_script(keys=[lock, name],
                                                            args=[owner, blob, math.ceil(ttl * 1000)]))
                if not written:
                    self.metrics.event("fill_dropped")  # purged (or the lock lapsed) meanwhile
            else:
                await self.call(self._release(keys=[lock], args=[owner]))
        return info, now + ttl

    async def call(self, command: Awaitable[T]) -> T:
        """One Redis command, bounded by ``fleet.timeout``; any failure feeds the breaker (a span of
        the check that waits for it, when that one is traced)."""
        span = tracing.child("redis", **{"db.system": "redis"})
        try:
            async with asyncio.timeout(self.timeout):
                result = await command
        except Exception as exc:  # RedisError, OSError, TimeoutError, or a reply redis-py could not parse
            self.breaker.failure()
            self.metrics.event("error")
            log.warning("fleet redis failed", extra={"error_type": type(exc).__name__})
            span.end(type(exc).__name__, error=True)
            raise RedisDown from None
        self.breaker.success()
        span.end("ok")
        return result

    # -- lifetime --------------------------------------------------------------------------------

    async def warm(self) -> None:
        """Connect and load the scripts once, so the first checks pay neither (best effort)."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                for script in (_READ_OR_LOCK, _FILL, _RELEASE):
                    await self.redis.script_load(script)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.redis.aclose()
