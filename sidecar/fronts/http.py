"""The HTTP front: one check route for any method on any path (the admin routes: admin.py).

nginx ``auth_request`` calls a fixed location; Envoy's HTTP ext_authz calls ``path_prefix`` +
the original path with the original method. Both get the same answer: 200 with the credential
headers, or 401/403/400 with an RFC 6750 challenge, or 429/503 with ``Retry-After``.

The front only translates: it hands the core every certificate header copy, the peer address
and the forwarded client address, and renders what the core decides.
"""

from __future__ import annotations

from aiohttp import web

from sidecar.core.decision import Allow, Miss
from sidecar.core.request import CheckRequest
from sidecar.core.response import render_denial
from sidecar.runtime import SIDECAR


async def check(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR]
    decider = sidecar.decider
    headers = request.headers
    facts = CheckRequest(headers.getall("Authorization", ()), headers.getall(sidecar.cert_header, ()),
                         request.remote, forwarded=headers.get(sidecar.source_header))
    decision = decider.decide_now(facts)  # a cached token is answered here, without awaiting
    if isinstance(decision, Miss):
        decision = await decider.decide(facts, decision)
    if isinstance(decision, Allow):
        return web.Response(headers=decision.headers.pairs())
    config = sidecar.config
    denied = render_denial(decision.denial, config.response.realm, config.server.invalid_request_status)
    return web.Response(status=denied.status, body=denied.body, headers=denied.headers)

