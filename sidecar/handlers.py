"""The HTTP front: one check route for any method on any path, and the admin routes.

nginx ``auth_request`` calls a fixed location; Envoy's HTTP ext_authz calls ``path_prefix`` +
the original path with the original method. Both get the same answer: 200 with the credential
headers, or 401/403/400 with an RFC 6750 challenge, or 503 when the IdP cannot answer.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .decision import Allow, CheckRequest
from .response import deny_body, deny_headers
from .runtime import SIDECAR


async def check(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR]
    headers = request.headers
    # Every copy of the certificate header: two copies mean a proxy appended instead of replacing.
    certificates = headers.getall(sidecar.cert_header, ()) if request.remote in sidecar.trusted_proxies else ()
    sidecar.in_flight += 1
    try:
        decision = await sidecar.decider.decide(CheckRequest(
            headers.getall("Authorization", ()), certificates[0] if certificates else None,
            certificate_duplicated=len(certificates) > 1,
        ))
    finally:
        sidecar.in_flight -= 1
    if isinstance(decision, Allow):
        return web.Response(headers=decision.headers)
    denial = decision.denial
    status = denial.status
    if status == 400:
        status = sidecar.config.server.invalid_request_status
    return web.Response(
        status=status, body=deny_body(denial), content_type="application/json",
        headers=deny_headers(denial, sidecar.config.response.realm),
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR]
    ready, reason = sidecar.readiness()
    return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[SIDECAR].metrics.registry
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
