"""The assembled sidecar: configuration, issuer, fleet, decider, metrics, readiness.

One :class:`Sidecar` serves every front in the process (HTTP check port, admin port, gRPC).
:meth:`Sidecar.running` is its whole life (build, start, yield, close), shared by the server
(app.py) and the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from sidecar.config import Config
from sidecar.core.cache import TokenCache
from sidecar.core.decision import Decider
from sidecar.core.ports import SharedReplay
from sidecar.core.purges import Selector
from sidecar.idp.issuer import Issuer
from sidecar.support.background import Background
from sidecar.support.metrics import Metrics

if TYPE_CHECKING:
    from sidecar.fleet.purges import Purges
    from sidecar.fleet.store import Fleet


class Sidecar:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.issuer = Issuer(config, self.metrics)
        self.fleet = build_fleet(config, self.metrics) if config.fleet.enabled else None
        self.decider = Decider(config, self.issuer.verifier, self.metrics, shared=self.fleet,
                               shared_replay=shared_replay(self.fleet) if config.dpop.enabled else None)
        self.purges = None if self.fleet is None else fleet_purges(self.fleet, self.decider.cache)
        self.draining = False
        self._background = Background()
        self.metrics.inflight.set_function(lambda: self.in_flight)
        self.metrics.ready.set_function(lambda: 1 if self.readiness()[0] else 0)

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, config: Config) -> AsyncIterator[Sidecar]:
        """A started sidecar for the duration of the block; closed after it, whatever happens."""
        sidecar = cls(config)
        try:
            sidecar.start()
            yield sidecar
        finally:
            await sidecar.close()

    @property
    def in_flight(self) -> int:
        """Checks waiting for the IdP (drain waits for them; a cache hit never waits)."""
        return self.decider.in_flight

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "shutting_down"
        reason = self.issuer.readiness() or (self.purges.problem() if self.purges is not None else None)
        return (False, reason) if reason else (True, "ok")

    async def purge(self, selector: Selector) -> tuple[int, bool | None]:
        """Drop what ``selector`` names: the tokens dropped here, and whether the fleet was told
        (None without a fleet; False when Redis failed: purge again)."""
        purged = self.decider.cache.drop(selector)
        return purged, (await self.purges.send(selector) if self.purges is not None else None)

    def start(self) -> None:
        """Background work: the issuer's discovery, keys and file polling; the fleet's purge
        subscription (and its warm-up); the client CA bundle's polling (a Secret volume updates in place)."""
        self.issuer.start()
        if self.purges is not None:
            self.purges.start()
        if self.decider.presented.trust is not None and self.config.idp.reload_interval > 0:
            self._background.spawn(self._reload_client_trust())

    async def _reload_client_trust(self) -> None:
        while True:
            await asyncio.sleep(self.config.idp.reload_interval)
            self.decider.presented.reload_trust()

    async def close(self) -> None:
        await self._background.cancel()
        if self.purges is not None:
            await self.purges.aclose()
        if self.fleet is not None:
            await self.fleet.aclose()
        await self.issuer.close()


def build_fleet(config: Config, metrics: Metrics) -> Fleet:
    """The Redis second cache level (redis-py is imported only when ``fleet.enabled``)."""
    from sidecar.fleet.store import Fleet

    return Fleet(config, metrics)


def fleet_purges(fleet: Fleet, cache: TokenCache) -> Purges:
    """Purges through the fleet: sent to, and received from, every replica."""
    from sidecar.fleet.purges import Purges

    return Purges(fleet, cache)


def shared_replay(fleet: Fleet | None) -> SharedReplay | None:
    """The fleet's DPoP replay store: a proof accepted by one replica is a replay on every other."""
    if fleet is None:
        return None
    from sidecar.fleet.replay import RedisReplayStore

    return RedisReplayStore(fleet)


SIDECAR = web.AppKey("sidecar", Sidecar)
