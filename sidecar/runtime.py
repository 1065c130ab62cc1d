"""The assembled sidecar: configuration, IdP connection, verifier, decider, metrics, readiness.

One :class:`Sidecar` serves every front in the process (HTTP check port, admin port, gRPC).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from sidecar.config import Config
from sidecar.core.decision import Decider
from sidecar.core.replay import SharedReplay
from sidecar.core.verifier import Verifier
from sidecar.idp.discovery import Discovery
from sidecar.idp.guard import IdpGuard
from sidecar.idp.introspection import Introspector
from sidecar.idp.jwks import Jwks
from sidecar.idp.rotation import CertificateWatcher
from sidecar.idp.tls import IdpSession
from sidecar.idp.token_format import choose_verifier, local_jwt_enabled
from sidecar.support.metrics import Metrics

if TYPE_CHECKING:
    from sidecar.fleet.store import Fleet

log = logging.getLogger(__name__)


class Sidecar:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.idp = IdpSession(config.idp)
        self.discovery = Discovery(config.idp, self.idp)
        self.cert_watcher = CertificateWatcher(config.idp, self.idp, self.metrics)
        self.idp_guard = IdpGuard(config.idp, self.metrics)
        signed = config.idp.introspection_response != "json"
        self.jwks = Jwks(config.idp, self.idp, self.discovery, self.metrics) \
            if local_jwt_enabled(config) or signed else None
        self.verifier: Verifier = build_verifier(config, self)
        self.fleet = build_fleet(config, self.metrics) if config.fleet.enabled else None
        self.decider = Decider(config, self.verifier, self.metrics, shared=self.fleet,
                               shared_replay=shared_replay(self.fleet) if config.dpop.enabled else None)
        if self.fleet is not None:
            self.fleet.attach(self.decider.cache)
        self.cert_header = config.client_cert.header
        self.source_header = config.admission.source_header
        self.policy_header = config.routing.policy_header
        self._path_prefix = config.routing.path_prefix
        self.draining = False
        self._tasks: list[asyncio.Task[None]] = []
        self.metrics.inflight.set_function(lambda: self.in_flight)
        self.metrics.ready.set_function(lambda: 1 if self.readiness()[0] else 0)

    def original_path(self, raw_path: str) -> str | None:
        """The original request target of an Envoy HTTP check (``path_prefix`` + original path);
        None when the check path does not start with ``routing.path_prefix``."""
        prefix = self._path_prefix
        if not prefix:
            return raw_path
        return raw_path[len(prefix):] if raw_path.startswith(prefix) else None

    @property
    def in_flight(self) -> int:
        """Checks waiting for the IdP (drain waits for them; a cache hit never waits)."""
        return self.decider.in_flight

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "shutting_down"
        if self.cert_watcher.expired():
            return False, "client_certificate_expired"
        if self.config.idp.issuer and self.discovery.endpoints is None:
            return False, "discovery_pending"
        if self.jwks is not None and not self.jwks.ready:
            return False, "jwks_pending"
        return True, "ok"

    async def start(self) -> None:
        """Resolve the IdP endpoints in the background; readiness waits for them."""
        self._tasks.append(asyncio.create_task(self._discover_until_done()))
        self._tasks.append(asyncio.create_task(self.cert_watcher.run()))
        if self.fleet is not None:
            self.fleet.start()
        if self.jwks is not None:
            self._tasks.append(asyncio.create_task(self.jwks.load_until_ready()))
        if self.decider.trust is not None and self.config.idp.reload_interval > 0:
            self._tasks.append(asyncio.create_task(self._reload_client_trust()))

    async def _reload_client_trust(self) -> None:
        """``client_cert.ca_file`` is polled like the IdP's files (a Secret volume updates in place)."""
        while True:
            await asyncio.sleep(self.config.idp.reload_interval)
            self.decider.reload_client_trust()

    async def _discover_until_done(self) -> None:
        delay = 0.5
        while self.discovery.endpoints is None:
            with contextlib.suppress(Exception):
                await self.discovery.get()
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.fleet is not None:
            await self.fleet.aclose()
        await self.idp_guard.aclose()
        await self.idp.aclose()


def build_fleet(config: Config, metrics: Metrics) -> Fleet:
    """The Redis second cache level (redis-py is imported only when ``fleet.enabled``)."""
    from sidecar.fleet.store import Fleet

    return Fleet(config, metrics)


def shared_replay(fleet: Fleet | None) -> SharedReplay | None:
    """The fleet's DPoP replay store: a proof accepted by one replica is a replay on every other."""
    if fleet is None:
        return None
    from sidecar.fleet.replay import RedisReplayStore

    return RedisReplayStore(fleet)


def build_verifier(config: Config, sidecar: Sidecar) -> Verifier:
    """Introspection, local RFC 9068 validation, or a choice of the two (token_format.py)."""
    introspector = None if config.idp.token_format == "jwt" else Introspector(
        config.idp, sidecar.idp, sidecar.discovery,
        extra_claims=config.kept_claims, metrics=sidecar.metrics, guard=sidecar.idp_guard,
        keys=sidecar.jwks, leeway=config.policy.leeway,
    )
    # The JWK Set may be there for signed introspection answers only: local JWT validation still
    # needs what RFC 9068 §4 requires (local_jwt_enabled).
    local = sidecar.jwks if local_jwt_enabled(config) else None
    return choose_verifier(config, introspector, local, sidecar.discovery)


SIDECAR = web.AppKey("sidecar", Sidecar)
