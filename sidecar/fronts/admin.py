"""The admin port's routes: liveness, readiness, Prometheus metrics and (with a secret) purge.

They live apart from the check route: the admin port is for the kubelet, Prometheus and the
pod's own containers, never for the proxied clients. They share the checks' event loop, so none
may hold it long: the probes read a few attributes, and ``/metrics`` (the one costly answer: a
few hundred µs to render, more with many label sets) is rendered a metric family at a time,
yielding to the loop between steps of :data:`FAMILIES_PER_STEP`, by one rendering at a time
that concurrent scrapes share, and at most :data:`RENDER_SHARE` of the time (a scrape sooner
after the last rendering gets it again): a ``/metrics`` flood delays a check by one step, not
by a whole rendering, and costs the checks about what a ``/healthz`` flood does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from sidecar.runtime import SIDECAR
from sidecar.support.singleflight import SingleFlight

RENDER_SHARE = 0.5  # of the event loop's time that rendering /metrics may take, at most
FAMILIES_PER_STEP = 4


class _Family:
    """One metric family as a collector: ``generate_latest`` renders it alone."""

    __slots__ = ("_metric",)

    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> Iterator[Metric]:
        yield self._metric


class Scrapes:
    """The registry's rendering, done again only once the last one is far enough behind."""

    __slots__ = ("_body", "_clock", "_flight", "_next", "_registry")

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.perf_counter) -> None:
        self._registry = registry
        self._clock = clock
        self._body = b""
        self._next = 0.0  # no new rendering before then
        self._flight: SingleFlight[None, bytes] = SingleFlight()

    async def body(self) -> bytes:
        if self._clock() < self._next:
            return self._body
        body, _ = await self._flight.run(None, self._render)
        return body

    async def _render(self) -> bytes:
        parts: list[bytes] = []
        spent = 0.0
        families = iter(self._registry.collect())  # a generator: each collector is read when reached
        family: Metric | None = None
        while True:
            started = self._clock()
            for _ in range(FAMILIES_PER_STEP):
                family = next(families, None)
                if family is None:
                    break
                parts.append(generate_latest(_Family(family)))
            spent += self._clock() - started
            if family is None:
                break
            await asyncio.sleep(0)  # a check waiting on the loop goes first
        self._body = b"".join(parts)
        self._next = self._clock() + spent * (1 - RENDER_SHARE) / RENDER_SHARE
        return self._body


SCRAPES = web.AppKey("scrapes", Scrapes)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR]
    ready, reason = sidecar.readiness()
    return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=await request.app[SCRAPES].body(), headers={"Content-Type": CONTENT_TYPE_LATEST})
