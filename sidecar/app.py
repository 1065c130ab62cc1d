"""The aiohttp servers (check port, admin port) and serving them until SIGTERM.

The admin port (health, readiness, metrics) is apart from the check port so that no proxied
client can reach it. Each port is served through a connection gate (fronts/connections.py):
bounded connections, head deadlines and sizes, fixed error bodies. The admin port's cap is
small and both caps fit the file-descriptor limit, so the admin port cannot starve checks.

SIGHUP reloads the configuration (:func:`reload`): read again, checked, and swapped in by
:meth:`Sidecar.reload` without dropping a check; on any error the running configuration stays and
the log line and ``sidecar_config_reloads_total{result}`` say why. A port that cannot be bound
ends the start with :class:`ListenError`, which names the port and its key.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web

from sidecar.config import Config, admin_secret
from sidecar.core.extract import TrustedProxies
from sidecar.fronts import admin, events, jwks, purge
from sidecar.fronts import http as handlers
from sidecar.fronts.connections import Gate, GuardedSite, PortLimits, PortMetrics, fit_file_descriptors
from sidecar.fronts.purge_guard import PurgeGuard
from sidecar.runtime import INVALID, SIDECAR, RestartRequired, Sidecar

log = logging.getLogger(__name__)
Loader = Callable[[], Config]  # reads the configuration again (file and environment), for SIGHUP


class ListenError(Exception):
    """A port could not be bound; the message names it and its key."""


def check_server(sidecar: Sidecar) -> web.Server:
    """Any method on any path is a check (Envoy appends the original path to its prefix): aiohttp's
    low-level server calls the check handler for every request, with no router in between."""
    size = sidecar.config.server.max_header_size  # forwarded chains exceed aiohttp's default 8190 bytes
    return web.Server(handlers.check_handler(sidecar), max_field_size=size, max_line_size=size)


def admin_app(sidecar: Sidecar) -> web.Application:
    app = web.Application()
    app[SIDECAR] = sidecar
    app[admin.SCRAPES] = admin.Scrapes(sidecar.metrics.registry)
    app.router.add_get("/healthz", admin.healthz)
    app.router.add_get("/readyz", admin.readyz)
    app.router.add_get("/metrics", admin.metrics)
    if sidecar.decider.signing_keys is not None:  # the public keys of identity tokens (identity.key_file)
        app.router.add_get(jwks.PATH, jwks.jwks)
    if sidecar.events is not None:  # RFC 8935 push of Security Event Tokens
        app.router.add_post(events.PATH, events.receive)
    s = sidecar.config.server
    secret = admin_secret(s)
    if secret:  # no secret, no purge route
        app[purge.ADMIN_SECRET_DIGEST] = purge.secret_digest(secret)
        guard = PurgeGuard(s.purge_rate, s.purge_burst, s.purge_backoff, s.purge_backoff_max)
        app[purge.PURGE_ACCESS] = purge.PurgeAccess(TrustedProxies(s.purge_peers), guard, s.header_timeout)
        app.router.add_post("/purge", purge.purge)
    return app


# The admin port serves probes, scrapes and purges: small heads, few connections, short idles.
ADMIN_MAX_HEAD = 16384
ADMIN_IDLE_TIMEOUT = 15.0
CHECK_IDLE_TIMEOUT = 75.0  # aiohttp's default; longer than nginx's upstream keepalive_timeout (60 s)


def port_limits(config: Config) -> tuple[PortLimits, PortLimits]:
    """(check port, admin port) limits, the caps lowered to fit the file-descriptor limit."""
    s = config.server
    check_cap, admin_cap = fit_file_descriptors(s.max_connections, s.admin_max_connections,
                                                reserve=config.idp.max_connections + 128)
    check = PortLimits("check", check_cap, s.header_timeout, s.max_head_size, CHECK_IDLE_TIMEOUT,
                       max_field_size=s.max_header_size)
    admin_limits = PortLimits("admin", admin_cap, s.header_timeout, ADMIN_MAX_HEAD, ADMIN_IDLE_TIMEOUT,
                              max_per_peer=max(1, admin_cap // 4), evict_idle=True)
    return check, admin_limits


async def serve(config: Config, *, stop: asyncio.Event | None = None, loader: Loader | None = None) -> None:
    """Run both ports until SIGTERM/SIGINT (or ``stop``), then drain and exit within the grace;
    SIGHUP reloads through ``loader`` (none: SIGHUP is logged and ignored)."""
    async with Sidecar.running(config) as sidecar:
        await _serve(sidecar, stop or asyncio.Event(), loader)
    log.info("stopped", extra={"in_flight": sidecar.in_flight})


async def reload(sidecar: Sidecar, loader: Loader) -> bool:
    """Read the configuration again and serve it from the next check; on an error keep the running
    one and say why (a log line naming the key, ``sidecar_config_reloads_total{result}``)."""
    metrics = sidecar.metrics
    try:
        config = loader()
        await sidecar.reload(config)
    except Exception as exc:
        result = "refused" if isinstance(exc, RestartRequired) else "failed"
        if isinstance(exc, (*INVALID, TimeoutError)):
            error = str(exc) if not isinstance(exc, TimeoutError) else "the new configuration did not get ready"
        else:
            error = f"{type(exc).__name__}: {exc}"[:300]  # not a configuration error: never a key's value
        metrics.reloads.labels(result).inc()
        metrics.reload_ok.set(0)
        log.error("configuration not reloaded; the running one stays",
                  extra={"result": result, "error": error, "key": getattr(exc, "key", None)})
        return False
    logging.getLogger().setLevel(config.log.level.upper())
    metrics.reloads.labels("ok").inc()
    metrics.reload_ok.set(1)
    log.info("configuration reloaded", extra={"result": "ok"})
    return True


async def _serve(sidecar: Sidecar, stop: asyncio.Event, loader: Loader | None = None) -> None:
    config = sidecar.config
    s = config.server
    close_timeout = min(1.0, s.shutdown_grace / 4)
    check_runner = web.ServerRunner(check_server(sidecar), access_log=None, shutdown_timeout=close_timeout)
    admin_runner = web.AppRunner(admin_app(sidecar), access_log=None, shutdown_timeout=close_timeout)
    runners = [check_runner, admin_runner]
    grpc_front = None
    try:
        port_metrics = PortMetrics(sidecar.metrics.registry)
        ports = ((s.host, s.port, "server.port"), (s.admin_host, s.admin_port, "server.admin_port"))
        for runner, (host, port, key), limits in zip(runners, ports, port_limits(config), strict=True):
            await runner.setup()
            assert runner.server is not None  # set by setup()
            site = GuardedSite(runner, host, port, Gate(runner.server, limits, port_metrics),
                               reuse_port=runner is check_runner and s.workers > 1)
            await _listen(site.start(), host, port, key)
        if s.grpc_port:
            from sidecar.fronts.grpc import GrpcFront  # grpc is imported only when the gRPC port is on

            grpc_front = GrpcFront(sidecar)
            await _listen(grpc_front.start(s.grpc_host, s.grpc_port), s.grpc_host, s.grpc_port, "server.grpc_port")
        log.info("listening", extra={"check": f"{s.host}:{s.port}", "admin": f"{s.admin_host}:{s.admin_port}",
                                     "grpc": f"{s.grpc_host}:{s.grpc_port}" if s.grpc_port else "off"})
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            sidecar.draining = True  # /readyz answers 503 from this instant
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        reloads = _Reloads(sidecar, loader)
        loop.add_signal_handler(signal.SIGHUP, reloads.request)
        await stop.wait()
        await reloads.cancel()
        await drain(sidecar, check_runner, s.shutdown_grace - 2 * close_timeout)
    finally:
        if grpc_front is not None:
            await grpc_front.stop(1.0)  # drain() already waited for checks in flight
        for runner in runners:
            await runner.cleanup()


async def _listen(start: Awaitable[object], host: str, port: int, key: str) -> None:
    """Await a site's start; a port that cannot be bound is a :class:`ListenError` naming it."""
    try:
        await start
    except OSError as exc:
        why = "already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc)).lower()
        raise ListenError(f"cannot listen on {host}:{port} ({key}): {why}") from None


class _Reloads:
    """SIGHUP: one reload at a time; a signal during a reload runs one more after it."""

    def __init__(self, sidecar: Sidecar, loader: Loader | None) -> None:
        self._sidecar, self._loader = sidecar, loader
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._closed = False  # shutting down: parts a reload built now would never be closed

    def request(self) -> None:
        if self._loader is None:
            log.warning("SIGHUP ignored: no configuration to read again")
            return
        if self._closed:
            log.warning("SIGHUP ignored: shutting down")
            return
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run(self._loader))

    async def _run(self, loader: Loader) -> None:
        again = True
        while again:
            self._again = False
            log.info("SIGHUP: reloading the configuration")
            await reload(self._sidecar, loader)
            again = self._again

    async def cancel(self) -> None:
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def drain(sidecar: Sidecar, check_runner: web.BaseRunner, grace: float) -> None:
    """Readiness false at once; no new check connections; checks in flight get ``grace`` seconds.

    The check port stops listening, idle keep-alive connections close and busy ones close after
    the answer in progress, so the proxy opens no new work here while every check already
    received is answered. The admin port stays up until the end (/readyz says 503). With a
    native sidecar (restartPolicy: Always init container) the kubelet sends SIGTERM only after
    the proxy has exited, so nothing new is expected by then.
    """
    sidecar.draining = True
    loop = asyncio.get_running_loop()
    started = loop.time()
    log.info("draining", extra={"in_flight": sidecar.in_flight, "grace": grace})
    for site in list(check_runner.sites):
        await site.stop()
    server = check_runner.server
    pre_shutdown = getattr(server, "pre_shutdown", None)  # aiohttp >= 3.10
    if pre_shutdown is not None:
        pre_shutdown()
    while sidecar.in_flight and loop.time() - started < grace:
        await asyncio.sleep(0.02)
    log.info("drained", extra={"in_flight": sidecar.in_flight, "seconds": round(loop.time() - started, 3)})
