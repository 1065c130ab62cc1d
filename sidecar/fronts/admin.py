"""The admin port's routes: liveness, readiness, Prometheus metrics and (with a secret) purge.

They live apart from the check route: the admin port is for the kubelet, Prometheus and the
pod's own containers, never for the proxied clients. They share the checks' event loop, so none
may cost it much: the probes read a few attributes, and ``/metrics`` renders the registry at most
:data:`SCRAPE_RATE` times a second (a burst of :data:`SCRAPE_BURST`), answering the last
rendering otherwise — a ``/metrics`` flood costs the checks what a ``/healthz`` flood does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sidecar.runtime import SIDECAR
from sidecar.support.ratelimit import TokenBucket

SCRAPE_RATE, SCRAPE_BURST = 4.0, 8  # renderings of the registry per second, and at once


class Scrapes:
    """The registry's rendering, done again only while the bucket allows (Prometheus scrapes
    every few seconds: each of its scrapes is fresh)."""

    __slots__ = ("_body", "_bucket", "_clock", "_registry")

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.monotonic) -> None:
        self._registry = registry
        self._clock = clock
        self._bucket = TokenBucket(SCRAPE_RATE, SCRAPE_BURST, clock())
        self._body: bytes | None = None

    def body(self) -> bytes:
        if not self._bucket.take(self._clock()) or self._body is None:
            self._body = generate_latest(self._registry)
        return self._body


SCRAPES = web.AppKey("scrapes", Scrapes)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR]
    ready, reason = sidecar.readiness()
    return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[SCRAPES].body(), headers={"Content-Type": CONTENT_TYPE_LATEST})
