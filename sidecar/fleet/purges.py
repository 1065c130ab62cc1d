"""Purges across the fleet: a revoked token leaves Redis and every replica's memory.

A purge (``POST /purge`` on any replica) deletes the token's value and lock in Redis and is
published, sealed, on ``<prefix>purge``; every replica drops what it names from its in-process
cache. A replica whose subscription broke may have missed purges: when it subscribes again it
drops its whole in-memory cache (Redis refills it). Purges by hash and full purges scan Redis,
bounded as a whole by ``PURGE_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import Any

from redis.asyncio.cluster import RedisCluster

from sidecar.core.cache import TokenCache
from sidecar.core.revocation import Selector
from sidecar.fleet.seal import Tampered
from sidecar.fleet.store import Fleet
from sidecar.support.logs import token_hash

log = logging.getLogger("sidecar.fleet.store")
MAX_MESSAGE = 8192  # a revocation carries up to MAX_SELECTORS selectors
MAX_SELECTORS = 4
PURGE_TIMEOUT = 5.0  # a purge scans Redis (by hash, all): bounded as a whole
_TOKEN_HASH = re.compile(r"^[0-9a-f]{12}\Z")
_KEY = re.compile(r"[0-9a-f]{32}\Z")


class Purges:
    """Purges sent from this replica and received from the others, for ``cache``."""

    def __init__(self, fleet: Fleet, cache: TokenCache) -> None:
        self._fleet = fleet
        self._cache = cache
        self._listener: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    async def token(self, key: bytes, token: str) -> bool:
        """Drop one token's answer from Redis and from every replica's memory; False if Redis failed."""
        names, hashed = self._fleet.names, token_hash(token)
        return await self._purge([names.value(key, hashed), names.lock(key, hashed)], None,
                                 {"by": "key", "v": key.hex()})

    async def hash(self, hashed: str) -> bool:
        return await self._purge([], self._fleet.names.of_hash(hashed), {"by": "token_hash", "v": hashed})

    async def all(self) -> bool:
        return await self._purge([], self._fleet.names.every_answer(), {"by": "all"})

    async def revoke(self, selectors: list[Selector], at: float, keys: list[tuple[bytes, str]]) -> bool:
        """Revocations (core/revocation.py) to every replica, and out of Redis the answers this
        replica found for them (``keys``: cache key and token hash). A replica filling a token from
        Redis later still refuses it: the revocation is remembered there too."""
        names = self._fleet.names
        doomed = [name for key, hashed in keys for name in (names.value(key, hashed), names.lock(key, hashed))]
        return await self._purge(doomed, None, {"by": "revoke", "v": [s.to_message() for s in selectors],
                                                "at": at})

    async def _purge(self, names: list[str], pattern: str | None, message: dict[str, object]) -> bool:
        fleet = self._fleet
        channel = fleet.names.channel
        sealed = fleet.sealer.seal(channel.encode(), json.dumps(message).encode())
        try:
            async with asyncio.timeout(PURGE_TIMEOUT):
                if pattern is not None:
                    names += [n async for n in fleet.redis.scan_iter(match=pattern, count=1000)]
                for start in range(0, len(names), 500):
                    await fleet.redis.unlink(*names[start:start + 500])
                await fleet.redis.publish(channel, sealed)
        except Exception as exc:  # Redis failing: the local purge stands, the caller is told
            fleet.metrics.event("error")
            log.warning("fleet purge failed", extra={"error_type": type(exc).__name__})
            return False
        fleet.metrics.event("purge_sent")
        return True

    def apply(self, data: Any) -> bool:
        """A purge message from the channel: drop what it names from memory; False if refused."""
        fleet, cache = self._fleet, self._cache
        try:
            if not isinstance(data, bytes) or len(data) > MAX_MESSAGE:
                raise Tampered("not a purge message")
            doc = json.loads(fleet.sealer.open(fleet.names.channel.encode(), data))
        except (Tampered, ValueError):
            fleet.metrics.event("tampered")
            return False
        if not isinstance(doc, dict):
            return False
        by, value = doc.get("by"), doc.get("v")
        if by == "key" and isinstance(value, str) and _KEY.match(value):
            cache.purge(bytes.fromhex(value))
        elif by == "token_hash" and isinstance(value, str) and _TOKEN_HASH.match(value):
            cache.purge_hash(value)
        elif by == "all":
            cache.clear()
        elif by == "revoke" and isinstance(value, list) and 0 < len(value) <= MAX_SELECTORS \
                and isinstance(at := doc.get("at"), int | float):
            try:
                selectors = [Selector.from_message(v) for v in value]
            except ValueError:
                return False
            for selector in selectors:
                cache.revoke(selector, float(at))
        else:
            return False
        fleet.metrics.event("purge_received")
        return True

    def start(self) -> None:
        self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        """Subscribe to purges for as long as the process runs; on every (re)subscription the
        in-memory cache is dropped, since purges sent while unsubscribed were missed."""
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
                    await pubsub.subscribe(fleet.names.channel)
                if len(self._cache):
                    self._cache.clear()
                    fleet.metrics.event("resubscribed")
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
