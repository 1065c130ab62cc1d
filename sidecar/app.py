"""The aiohttp applications (check port, admin port) and serving them until SIGTERM.

The admin port (health, readiness, metrics) is apart from the check port so that no proxied
client can reach it.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from . import handlers
from .config import Config
from .runtime import SIDECAR, Sidecar

log = logging.getLogger(__name__)


def check_app(sidecar: Sidecar) -> web.Application:
    """Any method on any path is a check (Envoy appends the original path to its prefix)."""
    app = web.Application(handler_args=handler_args(sidecar.config))
    app[SIDECAR] = sidecar
    # [\s\S], not ".": a path with an encoded line break (%0A) is a check too, not a 404.
    app.router.add_route("*", r"/{tail:[\s\S]*}", handlers.check)
    return app


def admin_app(sidecar: Sidecar) -> web.Application:
    app = web.Application()
    app[SIDECAR] = sidecar
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics)
    return app


def handler_args(config: Config) -> dict[str, int]:
    """Forwarded certificate chains exceed aiohttp's default 8190-byte field limit."""
    size = config.server.max_header_size
    return {"max_field_size": size, "max_line_size": size}




async def serve(config: Config, *, stop: asyncio.Event | None = None) -> None:
    """Run both ports until SIGTERM/SIGINT (or ``stop``), then drain and exit."""
    sidecar = Sidecar(config)
    await sidecar.start()
    runners = [web.AppRunner(check_app(sidecar), access_log=None),
               web.AppRunner(admin_app(sidecar), access_log=None)]
    s = config.server
    try:
        for runner, (host, port) in zip(runners, ((s.host, s.port), (s.admin_host, s.admin_port)), strict=True):
            await runner.setup()
            await web.TCPSite(runner, host, port, reuse_port=True).start()
        log.info("listening", extra={"check": f"{s.host}:{s.port}", "admin": f"{s.admin_host}:{s.admin_port}"})
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await drain(sidecar, s.shutdown_grace)
    finally:
        for runner in runners:
            await runner.cleanup()
        await sidecar.close()


async def drain(sidecar: Sidecar, grace: float) -> None:
    """Readiness goes false at once; checks in flight get up to ``grace`` seconds to finish."""
    sidecar.draining = True
    log.info("draining", extra={"in_flight": sidecar.in_flight, "grace": grace})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while sidecar.in_flight and loop.time() < deadline:
        await asyncio.sleep(0.05)
