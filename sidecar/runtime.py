"""The assembled sidecar: configuration, issuers, fleet, decider, tracing, metrics, readiness.

One :class:`Sidecar` serves every front in the process (HTTP check port, admin port, gRPC).
:meth:`Sidecar.running` is its whole life (build, start, yield, close), shared by the server
(app.py) and the tests.

A reload (:meth:`Sidecar.reload`, on SIGHUP) builds the decision parts of the new configuration
(:class:`Parts`) beside the running ones, waits until they are ready, and swaps them in between
two requests: the fronts then take the new edge (fronts/answer.py), checks already in flight
finish on the parts they started on, and the replaced parts close once they have none left (or
after ``server.shutdown_grace``). Parts that the new configuration does not change are handed
over rather than rebuilt: the issuers (sessions, endpoints, JWK Sets) and, with them, the cached
IdP answers (core/cache.py), and the tracer. The remembered revocations, the SET ``jti``s seen,
the DPoP proofs accepted (with the secret that names them and signs the nonces), the sources'
admission budgets and back-offs and the identity signing keys (a rotation in progress) always go
over (core/stages.py). Keys read once at start
(ports, listeners, the admin routes: declared ``restart``) cannot change this way: such a reload
is refused whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING

from aiohttp import web

import sidecar
from sidecar.config import Config, ConfigError, admin_secret, restart_changes
from sidecar.core.cache import TokenCache
from sidecar.core.client_trust import ClientTrust
from sidecar.core.decision import Decider
from sidecar.core.identity_keys import SigningKeys
from sidecar.core.ports import SharedReplay
from sidecar.core.purges import Purge
from sidecar.core.replay import LocalReplayStore
from sidecar.core.revocation import Selector
from sidecar.idp.issuer import Issuer
from sidecar.idp.issuers import Issuers, answer_inputs
from sidecar.idp.jwt_access_token import KeySource
from sidecar.idp.security_events import SetVerifier
from sidecar.idp.tls import TlsConfigError, client_context
from sidecar.support.background import Background
from sidecar.support.metrics import Metrics
from sidecar.support.tracing import Tracing

MAX_SELECTORS = 4  # per fleet message (sidecar/fleet/purges.py has the same bound)

if TYPE_CHECKING:
    from sidecar.fleet.purges import Purges
    from sidecar.fleet.store import Fleet

log = logging.getLogger("sidecar")
READY_TIMEOUT = 15.0  # seconds a reload waits for the new parts (discovery, JWK Set) before giving up
INVALID = (ConfigError, TlsConfigError)  # what check() raises: the message names the key


class RestartRequired(ConfigError):
    """A reload changed a key that is read once at start (declared ``restart``)."""


def check(config: Config) -> None:
    """What a start (and a reload) needs beyond the keys: an IdP, TLS files that load, a CA bundle
    that parses, an admin secret file that holds one, the fleet extra; raises naming the key."""
    if not (config.idp_configured or config.issuers):
        raise ConfigError("idp.issuer", "set idp.issuer or idp.introspection_endpoint (or run 'sidecar demo')")
    for name, idp in config.every_issuer.items():
        try:
            client_context(idp)
        except TlsConfigError as exc:
            where = "idp" if name == "default" else f"issuers.{name}"
            raise TlsConfigError(str(exc).replace("idp.", f"{where}.")) from None
    if config.client_cert.ca_file:
        try:
            ClientTrust(config.client_cert.ca_file)
        except ValueError as exc:
            raise ConfigError("client_cert.ca_file", str(exc).removeprefix("client_cert.ca_file: ")) from None
    admin_secret(config.server)  # a secret file's content is checked too
    if config.fleet.enabled and importlib.util.find_spec("redis") is None:
        raise ConfigError("fleet.enabled", "needs the fleet extra: pip install 'sidecar[fleet]'")


class Parts:
    """The decision parts of one configuration. ``previous``: the parts this one replaces; what they
    share with it (the issuers, the tracer) is handed over, not rebuilt; what the stages have seen
    always is (core/stages.py)."""

    def __init__(self, config: Config, metrics: Metrics, previous: Parts | None = None) -> None:
        self.config = config
        self._metrics = metrics
        same_issuers = previous is not None and answer_inputs(previous.config) == answer_inputs(config)
        self.issuers: Issuers = previous.issuers if previous is not None and same_issuers else Issuers(config, metrics)
        self.tracing: Tracing | None = previous.tracing \
            if previous is not None and previous.config.tracing == config.tracing else _tracing(config)
        self.fleet = build_fleet(config, metrics) if config.fleet.enabled else None
        self.decider: Decider = Decider(
            config, self.issuers, metrics, shared=self.fleet,
            shared_replay=shared_replay(self.fleet) if config.dpop.enabled else None, tracing=self.tracing,
            previous=None if previous is None else previous.decider, reuse_answers=same_issuers)
        self.purges = None if self.fleet is None else fleet_purges(self.fleet, self.decider.cache)
        events = config.events
        algorithms = frozenset(a for idp in config.every_issuer.values() for a in idp.jwt_algorithms)
        self.events = SetVerifier(algorithms, events, self.verification_keys) if events.enabled else None
        self.shared_event_jtis = shared_replay(self.fleet)
        # What is shared with the parts this one replaces is closed by whichever serves last.
        self._owns_issuers = previous is None or self.issuers is not previous.issuers
        self._owns_tracing = previous is None or self.tracing is not previous.tracing
        self._background = Background()

    def verification_keys(self, issuer: str) -> KeySource | None:
        """The keys that verify what ``issuer`` signs (its JWK Set), None for an issuer not configured
        (a tenant of a multi-tenant one is configured by its own issuer identifier)."""
        return next((i.jwks for i in self.issuers if i.idp.issuer == issuer), None)

    def start(self) -> None:
        """Background work: each issuer's discovery, keys and file polling (unless they are shared);
        the fleet's purge subscription (and its warm-up); the client CA bundle's polling (a Secret
        volume updates in place); the identity signing key's polling and rotation."""
        if self._owns_issuers:
            self.issuers.start()
        if self.purges is not None:
            self.purges.start()
        if self.decider.presented.trust is not None and self.config.idp.reload_interval > 0:
            self._background.spawn(self._reload_client_trust())
        if self.decider.signing_keys is not None:
            self._background.spawn(self._rotate_identity_keys(self.decider.signing_keys))

    def take_over(self, old: Parts) -> None:
        """These parts now serve instead of ``old``: what they share is theirs to close, and the
        state the stages carry takes this configuration's limits (core/stages.py)."""
        self.decider.stages.take_over(old.decider.stages, self.config)
        if old.issuers is self.issuers:
            old._owns_issuers, self._owns_issuers = False, True
        if old.tracing is self.tracing:
            old._owns_tracing, self._owns_tracing = False, True

    def publish(self) -> None:
        """These parts are the ones the gauges read (only once they serve: parts a reload could not
        get ready never show)."""
        cache: TokenCache = self.decider.cache
        self._metrics.cache_entries.set_function(lambda: len(cache))
        self._metrics.cache_capacity.set(self.config.cache.max_entries)
        self._metrics.client_cert_expiry.set_function(self.issuers.earliest_expiry)

    def readiness(self) -> str | None:
        return self.issuers.readiness() or (self.purges.problem() if self.purges is not None else None)

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
        if self._owns_issuers:
            await self.issuers.close()
        if self._owns_tracing and self.tracing is not None:
            await self.tracing.aclose()
        self._metrics.retire(self.decider.outcomes.policies)


class Sidecar:
    def __init__(self, config: Config) -> None:
        self.metrics = Metrics()
        self.parts = Parts(config, self.metrics)
        self.parts.publish()
        # SET jtis seen (RFC 8935: de-duplicated), here and, in a fleet, on every replica: whatever
        # the configuration, for as long as the process lives.
        self.event_jtis = LocalReplayStore(config.events.max_revocations)
        self.draining = False
        self._retiring: set[Parts] = set()
        self._background = Background()
        self._swapped: list[Callable[[], None]] = []
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

    # The current configuration's parts, as every front and route reads them.
    @property
    def config(self) -> Config:
        return self.parts.config

    @property
    def issuers(self) -> Issuers:
        return self.parts.issuers

    @property
    def issuer(self) -> Issuer:
        """The first issuer (``[idp]`` when configured)."""
        return self.parts.issuers.default

    @property
    def fleet(self) -> Fleet | None:
        return self.parts.fleet

    @property
    def decider(self) -> Decider:
        return self.parts.decider

    @property
    def purges(self) -> Purges | None:
        return self.parts.purges

    @property
    def events(self) -> SetVerifier | None:
        return self.parts.events

    @property
    def shared_event_jtis(self) -> SharedReplay | None:
        return self.parts.shared_event_jtis

    def verification_keys(self, issuer: str) -> KeySource | None:
        return self.parts.verification_keys(issuer)

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
    def in_flight(self) -> int:
        """Checks waiting for the IdP (drain waits for them; a cache hit never waits), on the
        current parts and on those a reload replaced."""
        return self.parts.decider.in_flight + sum(p.decider.in_flight for p in self._retiring)

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "shutting_down"
        reason = self.parts.readiness()
        return (False, reason) if reason else (True, "ok")

    async def purge(self, purge: Purge) -> tuple[int, bool | None]:
        """Drop the answers ``purge`` names: the tokens dropped here, and whether the fleet was told
        (None without a fleet; False when Redis failed: purge again)."""
        purged = self.decider.cache.drop(purge)
        return purged, (await self.purges.send(purge) if self.purges is not None else None)

    def start(self) -> None:
        self.parts.start()

    def on_swap(self, callback: Callable[[], None]) -> None:
        """``callback`` runs right after a reload swapped the parts (a front takes the new edge)."""
        self._swapped.append(callback)

    async def reload(self, config: Config) -> None:
        """Serve ``config`` from the next request on, or raise (ConfigError naming the key, or
        TimeoutError when the new parts did not get ready) and keep serving the current one."""
        changed = restart_changes(self.config, config)
        if changed:
            raise RestartRequired(changed[0], f"needs a restart, a reload cannot change it (changed: "
                                              f"{', '.join(changed)})")
        check(config)
        new = Parts(config, self.metrics, previous=self.parts)
        try:
            new.start()
            async with asyncio.timeout(READY_TIMEOUT):
                waiting = None
                while (reason := new.readiness()) is not None:
                    if reason != waiting:
                        log.info("reload waiting", extra={"reason": reason})
                        waiting = reason
                    await asyncio.sleep(0.05)
        except BaseException:
            await new.close()
            raise
        old, self.parts = self.parts, new
        new.take_over(old)
        new.publish()
        for callback in self._swapped:
            callback()
        self._retiring.add(old)
        self._background.spawn(self._retire(old))

    async def _retire(self, old: Parts) -> None:
        """Close replaced parts once no check awaits them (at most ``server.shutdown_grace`` later)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.server.shutdown_grace
        try:
            while old.decider.in_flight and loop.time() < deadline:
                await asyncio.sleep(0.05)
            old.decider.outcomes.decision_log.flush()
        finally:
            self._retiring.discard(old)
            await old.close()

    async def close(self) -> None:
        await self._background.cancel()  # each _retire closes its parts when cancelled
        await self.parts.close()


def _tracing(config: Config) -> Tracing | None:
    t = config.tracing
    if not t.enabled:
        return None
    return Tracing(t.endpoint, service_name=t.service_name, version=sidecar.__version__, sample_ratio=t.sample_ratio,
                   ca_file=t.ca_file)


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
