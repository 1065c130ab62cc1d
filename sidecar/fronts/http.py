"""The HTTP front: one check route for any method on any path (the admin routes: admin.py).

nginx ``auth_request`` calls a fixed location; Envoy's HTTP ext_authz calls ``path_prefix`` +
the original path with the original method. Both get the same answer: 200 with the credential
headers, or 401/403/400 with an RFC 6750 challenge, or 503 when the IdP cannot answer.
"""

from __future__ import annotations

from aiohttp import web

from sidecar.core.decision import Allow, CheckRequest
from sidecar.core.response import render_denial
from sidecar.runtime import SIDECAR


async def check(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR]
    headers = request.headers
    # Every copy of the certificate header: two copies mean a proxy appended instead of replacing.
    certificates = headers.getall(sidecar.cert_header, ()) if request.remote in sidecar.trusted_proxies else ()
    certificate = certificates[0] if certificates else None
    duplicated = len(certificates) > 1
    authorization = headers.getall("Authorization", ())
    if not duplicated:
        hit = sidecar.decider.decide_hit(authorization, certificate)  # the hot path: no await
        if hit is not None:
            return web.Response(headers=hit.headers.pairs())  # always CredentialHeaders (HeaderBuilder.build)
    sidecar.in_flight += 1
    try:
        decision = await sidecar.decider.decide(
            CheckRequest(authorization, certificate, certificate_duplicated=duplicated)
        )
    finally:
        sidecar.in_flight -= 1
    if isinstance(decision, Allow):
        return web.Response(headers=decision.headers)
    config = sidecar.config
    denied = render_denial(decision.denial, config.response.realm, config.server.invalid_request_status)
    return web.Response(status=denied.status, body=denied.body, headers=denied.headers)

