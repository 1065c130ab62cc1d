"""The assembled sidecar: configuration, issuer, fleet, decider, tracing, metrics, readiness.

One :class:`Sidecar` serves every front in the process (HTTP check port, admin port, gRPC).
:meth:`Sidecar.running` is its whole life (build, start, yield, close), shared by the server
(app.py) and the tests.

A reload (:meth:`Sidecar.reload`, on SIGHUP) builds the decision parts of the new configuration
(:class:`Parts`) beside the running ones, waits until they are ready, and swaps them in between
two requests: the fronts then take the new edge (fronts/answer.py), checks already in flight
finish on the parts they started on, and the replaced parts close once they have none left (or
after ``server.shutdown_grace``). Parts that the new configuration does not change are handed
over rather than rebuilt: the issuer (its session, endpoints and JWK Set) and, with it, the cached
IdP answers (core/cache.py), and the tracer. Keys read once at start (ports, listeners: declared
``restart``) cannot change this way: such a reload is refused whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from aiohttp import web

import sidecar
from sidecar.config import Config, ConfigError, admin_secret, restart_changes
from sidecar.core.cache import TokenCache
from sidecar.core.client_trust import ClientTrust
from sidecar.core.decision import Decider
from sidecar.core.ports import SharedReplay
from sidecar.idp.issuer import Issuer, answer_inputs
from sidecar.idp.tls import TlsConfigError, client_context
from sidecar.support.background import Background
from sidecar.support.metrics import Metrics
from sidecar.support.tracing import Tracing

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
    if not config.idp_configured:
        raise ConfigError("idp.issuer", "set idp.issuer or idp.introspection_endpoint (or run 'sidecar demo')")
    client_context(config.idp)
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
    share with it (the issuer, the tracer) is handed over, not rebuilt."""

    def __init__(self, config: Config, metrics: Metrics, previous: Parts | None = None) -> None:
        self.config = config
        self._metrics = metrics
        same_issuer = previous is not None and answer_inputs(previous.config) == answer_inputs(config)
        self.issuer: Issuer = previous.issuer if previous is not None and same_issuer else Issuer(config, metrics)
        self.tracing: Tracing | None = previous.tracing \
            if previous is not None and previous.config.tracing == config.tracing else _tracing(config)
        self.fleet = build_fleet(config, metrics) if config.fleet.enabled else None
        self.decider: Decider = Decider(config, self.issuer.verifier, metrics, shared=self.fleet,
                               shared_replay=shared_replay(self.fleet) if config.dpop.enabled else None,
                               tracing=self.tracing, previous=previous.decider if same_issuer and previous else None)
        self.purges = None if self.fleet is None else fleet_purges(self.fleet, self.decider.cache)
        # What is shared with the parts this one replaces is closed by whichever serves last.
        self._owns_issuer = previous is None or self.issuer is not previous.issuer
        self._owns_tracing = previous is None or self.tracing is not previous.tracing
        self._background = Background()

    def start(self) -> None:
        """Background work: the issuer's discovery, keys and file polling (unless it is shared);
        the fleet's purge subscription (and its warm-up); the client CA bundle's polling."""
        if self._owns_issuer:
            self.issuer.start()
        if self.purges is not None:
            self.purges.start()
        if self.decider.presented.trust is not None and self.config.idp.reload_interval > 0:
            self._background.spawn(self._reload_client_trust())

    def take_over(self, old: Parts) -> None:
        """These parts now serve instead of ``old``: what they share is theirs to close."""
        if old.issuer is self.issuer:
            old._owns_issuer, self._owns_issuer = False, True
        if old.tracing is self.tracing:
            old._owns_tracing, self._owns_tracing = False, True

    def publish(self) -> None:
        """These parts are the ones the gauges read."""
        cache: TokenCache = self.decider.cache
        self._metrics.cache_entries.set_function(lambda: len(cache))

    def readiness(self) -> str | None:
        return self.issuer.readiness()

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
        if self._owns_issuer:
            await self.issuer.close()
        if self._owns_tracing and self.tracing is not None:
            await self.tracing.aclose()
        self._metrics.retire(self.decider.outcomes.policies)


class Sidecar:
    def __init__(self, config: Config) -> None:
        self.metrics = Metrics()
        self.parts = Parts(config, self.metrics)
        self.parts.publish()
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
    def issuer(self) -> Issuer:
        return self.parts.issuer

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
    def in_flight(self) -> int:
        """Checks waiting for the IdP (drain waits for them; a cache hit never waits), on the
        current parts and on those a reload replaced."""
        return self.parts.decider.in_flight + sum(p.decider.in_flight for p in self._retiring)

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "shutting_down"
        reason = self.parts.readiness()
        return (False, reason) if reason else (True, "ok")

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
                while (reason := new.readiness()) is not None:
                    log.info("reload waiting", extra={"reason": reason})
                    await asyncio.sleep(0.05)
        except BaseException:
            await new.close()
            self.parts.publish()
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
