"""The assembled sidecar: configuration, issuers, fleet, decider, metrics, readiness.

One :class:`Sidecar` serves every front in the process (HTTP check port, admin port, gRPC).
:meth:`Sidecar.running` is its whole life (build, start, yield, close), shared by the server
(app.py) and the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from aiohttp import web

from sidecar.config import Config
from sidecar.core.cache import TokenCache
from sidecar.core.decision import Decider
from sidecar.core.identity_keys import SigningKeys
from sidecar.core.ports import SharedReplay
from sidecar.core.purges import Purge
from sidecar.core.replay import LocalReplayStore
from sidecar.core.revocation import Selector
from sidecar.idp.issuer import Issuer
from sidecar.idp.issuers import Issuers
from sidecar.idp.jwt_access_token import KeySource
from sidecar.idp.security_events import SetVerifier
from sidecar.support.background import Background
from sidecar.support.metrics import Metrics

MAX_SELECTORS = 4  # per fleet message (sidecar/fleet/purges.py has the same bound)

if TYPE_CHECKING:
    from sidecar.fleet.purges import Purges
    from sidecar.fleet.store import Fleet


class Sidecar:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.issuers = Issuers(config, self.metrics)
        self.fleet = build_fleet(config, self.metrics) if config.fleet.enabled else None
        self.decider = Decider(config, self.issuers, self.metrics, shared=self.fleet,
                               shared_replay=shared_replay(self.fleet) if config.dpop.enabled else None)
        self.purges = None if self.fleet is None else fleet_purges(self.fleet, self.decider.cache)
        events = config.events
        algorithms = frozenset(a for idp in config.every_issuer.values() for a in idp.jwt_algorithms)
        self.events = SetVerifier(algorithms, events, self.verification_keys) if events.enabled else None
        # SET jtis seen (RFC 8935: de-duplicated), here and, in a fleet, on every replica.
        self.event_jtis = LocalReplayStore(events.max_revocations)
        self.shared_event_jtis = shared_replay(self.fleet)
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

    def verification_keys(self, issuer: str) -> KeySource | None:
        """The keys that verify what ``issuer`` signs (its JWK Set), None for an issuer not configured
        (a tenant of a multi-tenant one is configured by its own issuer identifier)."""
        return next((i.jwks for i in self.issuers if i.idp.issuer == issuer), None)

    async def revoke(self, selectors: Sequence[Selector], at: float) -> tuple[int, bool | None]:
        """Purge what ``selectors`` name and remember them as revoked at wall-clock ``at``, here and
        on every replica: (answers purged here, whether the fleet was told; None without a fleet)."""
        cache = self.decider.cache
        found = [key for selector in selectors for key, _ in cache.matching(selector)]
        purged = sum(cache.revoke(selector, at) for selector in selectors)
        if self.purges is None:
            return purged, None
        told = [await self.purges.revoke(list(selectors[i:i + MAX_SELECTORS]), at, found if not i else [])
                for i in range(0, len(selectors), MAX_SELECTORS)]
        return purged, all(told)

    @property
    def issuer(self) -> Issuer:
        """The first issuer (``[idp]`` when configured)."""
        return self.issuers.default

    @property
    def in_flight(self) -> int:
        """Checks waiting for the IdP (drain waits for them; a cache hit never waits)."""
        return self.decider.in_flight

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "shutting_down"
        reason = self.issuers.readiness() or (self.purges.problem() if self.purges is not None else None)
        return (False, reason) if reason else (True, "ok")

    async def purge(self, purge: Purge) -> tuple[int, bool | None]:
        """Drop the answers ``purge`` names: the tokens dropped here, and whether the fleet was told
        (None without a fleet; False when Redis failed: purge again)."""
        purged = self.decider.cache.drop(purge)
        return purged, (await self.purges.send(purge) if self.purges is not None else None)

    def start(self) -> None:
        """Background work: each issuer's discovery, keys and file polling; the fleet's purge
        subscription (and its warm-up); the client CA bundle's polling (a Secret volume updates in
        place); the identity signing key's polling and rotation."""
        self.issuers.start()
        if self.purges is not None:
            self.purges.start()
        if self.decider.presented.trust is not None and self.config.idp.reload_interval > 0:
            self._background.spawn(self._reload_client_trust())
        if self.decider.identity is not None:
            self._background.spawn(self._rotate_identity_keys(self.decider.identity.keys))

    async def _reload_client_trust(self) -> None:
        while True:
            await asyncio.sleep(self.config.idp.reload_interval)
            self.decider.presented.reload_trust()

    async def _rotate_identity_keys(self, keys: SigningKeys) -> None:
        """The identity signing key file's changes and the rotation's steps (core/identity_keys.py)."""
        while True:
            await asyncio.sleep(self.config.identity.reload_interval)
            keys.poll()

    async def close(self) -> None:
        await self._background.cancel()
        if self.purges is not None:
            await self.purges.aclose()
        if self.fleet is not None:
            await self.fleet.aclose()
        await self.issuers.close()


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
