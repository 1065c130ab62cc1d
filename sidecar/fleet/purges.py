"""Purges and revocations across the fleet: a revoked token leaves every replica's memory, and no
copy of an answer given before the purge is used after it, whoever writes Redis.

:meth:`Purges.send` takes any :class:`~sidecar.core.purges.Purge`: the replica remembers it
(core/purges.py), deletes a single token's value and lock from Redis (two names: bounded, whatever
else Redis holds; purges by hash and full purges delete nothing, there is nothing to scan) and
publishes it, sealed, on the fleet's channel (channel.py). Every replica that hears it drops what
it names from memory and remembers it, so a value saved from Redis and written back is refused.
:meth:`Purges.revoke` carries revocations (core/revocation.py) the same way: every replica purges
and remembers them (the cache refuses a token they name when it is filled again, from Redis too).

The subscription is watched: each replica beats every :data:`BEAT` seconds and must hear its own
beats back; a replica that has not for :data:`SILENT` seconds (or whose connection failed)
subscribes again. While it is not subscribed it reads no shared answer (it may be missing
purges), and each time it subscribes it drops its in-memory cache and raises its floor: answers
begun before then are refused (Redis refills them). A new replica says hello; the others answer
with a beat, which tells it at once whether it reads the fleet's seal (channel.py, readiness).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster

from sidecar.core.cache import TokenCache
from sidecar.core.purges import Purge
from sidecar.core.revocation import Selector
from sidecar.fleet.channel import Agreement, Channel, Foreign
from sidecar.fleet.seal import Tampered
from sidecar.fleet.store import Fleet
from sidecar.support.background import Background

log = logging.getLogger("sidecar.fleet")
PURGE_TIMEOUT = 5.0  # a purge: two deletions and a publish, bounded as a whole
MAX_SELECTORS = 4  # revocations per message (runtime.py sends more in several)
BEAT = 2.0  # seconds between a replica's heartbeats
SILENT = 3 * BEAT  # not hearing its own beats for this long: the subscription is resumed
ANSWER_EVERY = 1.0  # at most one answering beat per second (to a hello, or a message we cannot read)


class ChannelSilent(Exception):
    """This replica has not heard its own beats: the subscription is dead though it looks open."""


class Purges:
    """Purges sent from this replica and received from the others, for ``cache``."""

    def __init__(self, fleet: Fleet, cache: TokenCache) -> None:
        self._fleet = fleet
        self._cache = cache
        self.channel = Channel(fleet.names, fleet.sealer)
        self.agreement = Agreement()
        self._background = Background()  # the subscription
        self.subscribed = asyncio.Event()
        self._heard_own = 0.0
        self._beaten = -ANSWER_EVERY  # when this replica last beat (monotonic)
        self._answer_at: float | None = None  # when to answer with a beat, if asked

    async def send(self, purge: Purge) -> bool:
        """Drop ``purge``'s answers fleet-wide; False if Redis failed (this replica's own purge
        stands: purge again)."""
        self._fleet.memory.remember(purge)
        keys = [bytes.fromhex(purge.value)] if purge.kind == "key" else []
        return await self._publish(self.channel.seal("purge", p=purge.wire()), keys)

    async def revoke(self, selectors: list[Selector], at: float, keys: list[bytes]) -> bool:
        """Revocations (at most :data:`MAX_SELECTORS`) to every replica, and out of Redis the
        answers this replica found for them (``keys``: their cache keys)."""
        for selector in selectors:
            self._fleet.memory.revoked(selector)
        message = self.channel.seal("revoke", r=[s.to_message() for s in selectors], at=at)
        return await self._publish(message, keys)

    async def _publish(self, message: bytes, keys: list[bytes]) -> bool:
        fleet = self._fleet
        try:
            async with asyncio.timeout(PURGE_TIMEOUT):
                for key in keys:  # one slot each: a value and its lock share the hash tag
                    await fleet.redis.unlink(fleet.names.value(key), fleet.names.lock(key))
                await fleet.redis.publish(self.channel.name, message)
        except Exception as exc:  # Redis failing: the local purge stands, the caller is told
            fleet.metrics.event("error")
            log.warning("fleet purge failed", extra={"error_type": type(exc).__name__})
            return False
        fleet.metrics.event("purge_sent")
        return True

    def problem(self) -> str | None:
        """The readiness reason while this replica cannot count on the fleet's messages."""
        return self.agreement.problem()

    def apply(self, data: Any) -> bool:
        """A message from the channel; False if refused."""
        fleet = self._fleet
        try:
            message = self.channel.open(data)
        except Foreign as exc:
            fleet.metrics.event("foreign")
            self.agreement.foreign(exc.reason)
            self._answer()  # so that a newcomer with another key learns it from us
            return False
        except Tampered:
            fleet.metrics.event("tampered")
            return False
        if message.sender == self.channel.sender:
            self._heard_own = asyncio.get_running_loop().time()
            return True
        self.agreement.peer()
        if message.kind == "beat":
            if message.body.get("h") is True:
                self._answer()
            return True
        applied = self._revoke(message.body) if message.kind == "revoke" else self._purge(message.body)
        fleet.metrics.event("purge_received" if applied else "tampered")
        return applied

    def _purge(self, body: dict[str, Any]) -> bool:
        purge = Purge.from_wire(body.get("p"))
        if purge is None:
            return False
        self._fleet.memory.remember(purge)
        self._cache.drop(purge)
        return True

    def _revoke(self, body: dict[str, Any]) -> bool:
        revoked, at = body.get("r"), body.get("at")
        if not isinstance(revoked, list) or not 0 < len(revoked) <= MAX_SELECTORS or isinstance(at, bool) \
                or not isinstance(at, int | float):
            return False
        try:
            selectors = [Selector.from_message(doc) for doc in revoked]
        except ValueError:
            return False
        for selector in selectors:
            self._fleet.memory.revoked(selector)
            self._cache.revoke(selector, float(at))
        return True

    def _answer(self) -> None:
        """Beat soon: at once, or one second after the last beat (a flood asks for one a second)."""
        if self._answer_at is None:
            self._answer_at = max(asyncio.get_running_loop().time(), self._beaten + ANSWER_EVERY)

    def start(self) -> None:
        self._background.spawn(self._listen())

    async def _listen(self) -> None:
        """Subscribe for as long as the process runs, again after any failure or silence."""
        fleet = self._fleet
        await fleet.warm()
        delay = 0.1
        while True:
            pubsub = None
            try:
                async with asyncio.timeout(max(1.0, 10 * fleet.timeout)):
                    if isinstance(fleet.redis, RedisCluster):
                        await fleet.redis.initialize()  # the slot map first: any node then serves the channel
                    pubsub = fleet.redis.pubsub()
                    await pubsub.subscribe(self.channel.name)
                    await _confirmed(pubsub)
                self._subscribed()
                delay = 0.1
                await self._hear(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: subscribe again after a pause
                log.warning("fleet subscription lost", extra={"error_type": type(exc).__name__})
            finally:
                fleet.subscribed = False
                self.subscribed.clear()
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(2 * delay, 5.0)

    def _subscribed(self) -> None:
        """Purges sent until now may have been missed: forget what memory holds, refuse older answers."""
        fleet = self._fleet
        fleet.memory.raise_floor()
        if len(self._cache):
            self._cache.clear()
            fleet.metrics.event("resubscribed")
        fleet.subscribed = True
        self.agreement.subscribed()
        self.subscribed.set()

    async def _hear(self, pubsub: PubSub) -> None:
        """Messages until the channel fails or goes silent; a beat every BEAT seconds (the first a
        hello) and, when asked, an answer."""
        loop = asyncio.get_running_loop()
        self._heard_own = loop.time()
        next_beat, hello = loop.time(), True
        while True:
            now = loop.time()
            if now >= next_beat or (self._answer_at is not None and now >= self._answer_at):
                await self._beat(hello)
                hello, next_beat, self._answer_at, self._beaten = False, now + BEAT, None, now
            if now - self._heard_own > SILENT:
                raise ChannelSilent
            wake = next_beat if self._answer_at is None else min(next_beat, self._answer_at)
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=max(0.01, wake - now))
            if message is not None and message.get("type") == "message":
                self.apply(message.get("data"))

    async def _beat(self, hello: bool) -> None:
        """Publish a beat; a failure is the subscription's to notice (its own beats stop coming
        back), not the checks' breaker's."""
        fleet = self._fleet
        data = self.channel.seal("beat", h=True) if hello else self.channel.seal("beat")
        with contextlib.suppress(Exception):
            async with asyncio.timeout(max(1.0, 10 * fleet.timeout)):
                await fleet.redis.publish(self.channel.name, data)

    async def aclose(self) -> None:
        await self._background.cancel()


async def _confirmed(pubsub: PubSub) -> None:
    """Wait for Redis's reply to SUBSCRIBE: only from then is every message published delivered."""
    while True:
        reply = await pubsub.get_message(timeout=1.0)
        if reply is not None and reply.get("type") == "subscribe":
            return
