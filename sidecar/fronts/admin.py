"""The admin port's routes: liveness, readiness, Prometheus metrics and (with a secret) purge.

They live apart from the check route: the admin port is for the kubelet, Prometheus and the
pod's own containers, never for the proxied clients. They share the checks' event loop, so none
may hold it long: the probes read a few attributes, and ``/metrics`` (the one costly answer: a
few hundred µs to render, more with many label sets) is rendered :data:`FAMILIES_PER_STEP`
metric families at a time, yielding to the loop between steps, by one rendering that concurrent
scrapes share: a ``/metrics`` flood delays a check by one step, not by a whole rendering, and
costs the checks about what a ``/healthz`` flood does. A scrape that follows another is fresh.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from sidecar.runtime import SIDECAR
from sidecar.support.singleflight import SingleFlight

FAMILIES_PER_STEP = 4


class _Family:
    """One metric family as a collector: ``generate_latest`` renders it alone."""

    __slots__ = ("_metric",)

    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> Iterator[Metric]:
        yield self._metric


class Scrapes:
    """Renders the registry in steps; concurrent scrapes share one rendering."""

    __slots__ = ("_flight", "_registry")

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._flight: SingleFlight[None, bytes] = SingleFlight()

    async def body(self) -> bytes:
        body, _ = await self._flight.run(None, self._render)
        return body

    async def _render(self) -> bytes:
        parts: list[bytes] = []
        families = iter(self._registry.collect())  # a generator: each collector is read when reached
        while True:
            for _ in range(FAMILIES_PER_STEP):
                family = next(families, None)
                if family is None:
                    return b"".join(parts)
                parts.append(generate_latest(_Family(family)))
            await asyncio.sleep(0)  # a check waiting on the loop goes first


SCRAPES = web.AppKey("scrapes", Scrapes)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR]
    ready, reason = sidecar.readiness()
    return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=await request.app[SCRAPES].body(), headers={"Content-Type": CONTENT_TYPE_LATEST})
