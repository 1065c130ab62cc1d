"""The fleet's second cache level on Redis (:class:`~sidecar.core.shared.SharedAnswers`).

On a miss in memory (a hit never gets here):

1. **Read** the token's sealed value; an answer that opens is used until its own expiry.
2. Otherwise take the token's **lock** (``SET NX PX``, a little longer than ``idp.timeout``):
   the holder asks the IdP and writes the sealed answer with the TTL the cache would give it
   (never past ``exp``; inactive answers for ``negative_ttl``) — in one script that writes only
   while the lock is still its own, so a purge that deleted the lock meanwhile wins.
3. The others **poll** the value (2 ms, doubling to 25 ms) for at most ``fleet.lock_wait``, then
   ask the IdP themselves: a holder that died costs the others that wait, never an answer.

Redis failing never allows: an error, a command slower than ``fleet.timeout`` or a value that
does not open is a miss (counted), and the IdP answers as without a fleet. After
``fleet.breaker_failures`` consecutive failures Redis is skipped for ``fleet.breaker_open``
seconds, then tried again.

**Purges** delete the token's value and lock and are published (sealed) on ``<prefix>purge``;
every replica drops the entry from memory. A replica whose subscription broke may have missed
purges: when it subscribes again it drops its whole in-memory cache (Redis refills it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge
from redis.asyncio.cluster import RedisCluster

from sidecar.config import KEY, CacheConfig, Config, FleetConfig
from sidecar.core.cache import TokenCache, answer_ttl
from sidecar.core.shared import Verify
from sidecar.core.token_info import TokenInfo
from sidecar.fleet.breaker import Breaker
from sidecar.fleet.client import Client, connect
from sidecar.fleet.codec import decode, encode
from sidecar.fleet.seal import Names, Sealer, Tampered, read_material
from sidecar.support.logs import token_hash
from sidecar.support.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")
POLL_FIRST, POLL_MAX = 0.002, 0.025
MAX_MESSAGE = 1024
PURGE_TIMEOUT = 5.0  # a purge scans Redis (by hash, all): bounded as a whole
_TOKEN_HASH = re.compile(r"^[0-9a-f]{12}\Z")

# The value; else 2: not a string (planted); else 1: the lock taken; else 0: someone else's lock.
_READ_OR_LOCK = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'string' then return redis.call('GET', KEYS[1]) end
if kind ~= 'none' then return 2 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
# Write the answer only while the lock is still ours (a purge deletes it), then free the lock.
_FILL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class RedisDown(Exception):
    """Redis failed, was slower than ``fleet.timeout``, or the breaker is open."""


class FleetMetrics:
    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.events = Counter("sidecar_fleet", "Fleet cache events: hit, miss, waited, wait_expired, tampered, "
                              "error, bypass, fill_dropped, purge_sent, purge_received, resubscribed", ["event"],
                              registry=r)
        self.breaker = Gauge("sidecar_fleet_breaker_open", "1 while Redis is skipped after failures", registry=r)
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
        self.metrics.breaker.set_function(lambda: 1 if self.breaker.open else 0)
        self._cache_config: CacheConfig = config.cache
        self._timeout = f.timeout
        self._wait = min(f.lock_wait, config.idp.timeout)
        self._lock_ms = math.ceil((config.idp.timeout + 4 * f.timeout) * 1000)
        self._cache: TokenCache | None = None
        self._read_or_lock = self.redis.register_script(_READ_OR_LOCK)
        self._fill_script = self.redis.register_script(_FILL)
        self._release = self.redis.register_script(_RELEASE)
        self._listener: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    @property
    def digest_key(self) -> bytes:
        return self.names.digest_key

    def attach(self, cache: TokenCache) -> None:
        """The in-process cache that purges from other replicas reach."""
        self._cache = cache

    # -- the second cache level ------------------------------------------------------------------

    async def load(self, key: bytes, token: str, verify: Verify) -> tuple[TokenInfo, float]:
        if not self.breaker.allows():
            self.metrics.event("bypass")
            return await verify(), math.inf
        hashed = token_hash(token)
        name, lock = self.names.value(key, hashed), self.names.lock(key, hashed)
        owner = os.urandom(16)
        loop = asyncio.get_running_loop()
        deadline, delay, waited = loop.time() + self._wait, POLL_FIRST, False
        try:
            while True:
                # One round trip, atomic: the value, or the lock taken; a holder that filled and
                # freed the lock between a read and a lock attempt cannot be missed.
                got = await self.call(self._read_or_lock(keys=[name, lock], args=[owner, self._lock_ms]))
                if isinstance(got, bytes) or got == 2:
                    found = self._open(name, got if isinstance(got, bytes) else b"")
                    if found is not None:
                        self.metrics.event("waited" if waited else "hit")
                        return found
                    await self.call(self.redis.delete(name))  # not ours (or lapsed): refill it
                    continue
                if got == 1:
                    break
                if loop.time() + delay > deadline:
                    self.metrics.event("wait_expired")
                    return await verify(), math.inf
                waited = True
                await asyncio.sleep(delay)
                delay = min(2 * delay, POLL_MAX)
        except RedisDown:
            return await verify(), math.inf
        self.metrics.event("miss")
        return await self._fill(name, lock, owner, verify)

    def _open(self, name: str, blob: bytes) -> tuple[TokenInfo, float] | None:
        """A shared answer that opens and has not expired; None (a miss, counted) otherwise."""
        try:
            info, until = decode(self.sealer.open(name.encode(), blob))
        except Tampered as exc:
            self.metrics.event("tampered")
            log.warning("fleet value refused", extra={"reason": "tampered", "detail": str(exc)})
            return None
        return (info, until) if until > time.time() else None

    async def _fill(self, name: str, lock: str, owner: bytes, verify: Verify) -> tuple[TokenInfo, float]:
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
                blob = self.sealer.seal(name.encode(), encode(info, now + ttl))
                written = await self.call(self._fill_script(keys=[lock, name],
                                                            args=[owner, blob, math.ceil(ttl * 1000)]))
                if not written:
                    self.metrics.event("fill_dropped")  # purged (or the lock lapsed) meanwhile
            else:
                await self.call(self._release(keys=[lock], args=[owner]))
        return info, now + ttl

    async def call(self, command: Awaitable[T]) -> T:
        """One Redis command, bounded by ``fleet.timeout``; any failure feeds the breaker."""
        try:
            async with asyncio.timeout(self._timeout):
                result = await command
        except Exception as exc:  # RedisError, OSError, TimeoutError, or a reply redis-py could not parse
            self.breaker.failure()
            self.metrics.event("error")
            log.warning("fleet redis failed", extra={"error_type": type(exc).__name__})
            raise RedisDown from None
        self.breaker.success()
        return result

    # -- purges ----------------------------------------------------------------------------------

    async def purge_token(self, key: bytes, token: str) -> bool:
        """Drop one token's answer from Redis and from every replica's memory; False if Redis failed."""
        hashed = token_hash(token)
        return await self._purge([self.names.value(key, hashed), self.names.lock(key, hashed)], None,
                                 {"by": "key", "v": key.hex()})

    async def purge_hash(self, hashed: str) -> bool:
        return await self._purge([], self.names.of_hash(hashed), {"by": "token_hash", "v": hashed})

    async def purge_all(self) -> bool:
        return await self._purge([], self.names.every_answer(), {"by": "all"})

    async def _purge(self, names: list[str], pattern: str | None, message: dict[str, str]) -> bool:
        sealed = self.sealer.seal(self.names.channel.encode(), json.dumps(message).encode())
        try:
            async with asyncio.timeout(PURGE_TIMEOUT):
                if pattern is not None:
                    names += [n async for n in self.redis.scan_iter(match=pattern, count=1000)]
                for start in range(0, len(names), 500):
                    await self.redis.unlink(*names[start:start + 500])
                await self.redis.publish(self.names.channel, sealed)
        except Exception as exc:  # Redis failing: the local purge stands, the caller is told
            self.metrics.event("error")
            log.warning("fleet purge failed", extra={"error_type": type(exc).__name__})
            return False
        self.metrics.event("purge_sent")
        return True

    def apply(self, data: Any) -> bool:
        """A purge message from the channel: drop what it names from memory; False if refused."""
        cache = self._cache
        try:
            if not isinstance(data, bytes) or len(data) > MAX_MESSAGE:
                raise Tampered("not a purge message")
            doc = json.loads(self.sealer.open(self.names.channel.encode(), data))
        except (Tampered, ValueError):
            self.metrics.event("tampered")
            return False
        if cache is None or not isinstance(doc, dict):
            return False
        by, value = doc.get("by"), doc.get("v")
        if by == "key" and isinstance(value, str) and re.fullmatch(r"[0-9a-f]{32}", value):
            cache.purge(bytes.fromhex(value))
        elif by == "token_hash" and isinstance(value, str) and _TOKEN_HASH.match(value):
            cache.purge_hash(value)
        elif by == "all":
            cache.clear()
        else:
            return False
        self.metrics.event("purge_received")
        return True

    # -- lifetime --------------------------------------------------------------------------------

    def start(self) -> None:
        self._listener = asyncio.create_task(self._listen())

    async def _warm(self) -> None:
        """Connect and load the scripts once, so the first checks pay neither (best effort)."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                for script in (_READ_OR_LOCK, _FILL, _RELEASE):
                    await self.redis.script_load(script)

    async def _listen(self) -> None:
        """Subscribe to purges for as long as the process runs; on every (re)subscription the
        in-memory cache is dropped, since purges sent while unsubscribed were missed."""
        await self._warm()
        delay = 0.1
        while True:
            pubsub = None
            try:
                async with asyncio.timeout(max(1.0, 10 * self._timeout)):
                    if isinstance(self.redis, RedisCluster):
                        await self.redis.initialize()  # the slot map first: any node then serves the channel
                    pubsub = self.redis.pubsub()
                    await pubsub.subscribe(self.names.channel)
                if self._cache is not None and len(self._cache):
                    self._cache.clear()
                    self.metrics.event("resubscribed")
                self.subscribed.set()
                delay = 0.1
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self.apply(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: subscribe again after a pause
                self.subscribed.clear()
                log.warning("fleet subscription lost", extra={"error_type": type(exc).__name__})
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(2 * delay, 5.0)

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        with contextlib.suppress(Exception):
            await self.redis.aclose()
