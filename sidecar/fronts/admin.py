"""The admin port's routes: liveness, readiness, Prometheus metrics and (with a secret) purge.

They live apart from the check route: the admin port is for the kubelet, Prometheus and the
pod's own containers, never for the proxied clients.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar.runtime import SIDECAR


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR]
    ready, reason = sidecar.readiness()
    return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[SIDECAR].metrics.registry
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
