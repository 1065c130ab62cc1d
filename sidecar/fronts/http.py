"""The HTTP front: one check route for any method on any path (the admin routes: admin.py).

nginx ``auth_request`` calls a fixed location; Envoy's HTTP ext_authz calls ``path_prefix`` +
the original path with the original method. Both get the same answer: 200 with the credential
headers, or 401/403/400 with an RFC 6750 challenge, or 429/503 with ``Retry-After``.

The front only translates: it hands the core every certificate header copy, the peer address,
the forwarded client address, every ``DPoP`` header and the original request — nginx's
``X-Original-Method``, ``X-Original-URI``, ``Host`` and ``X-Forwarded-Proto`` (deploy/nginx
snippets/sidecar-check.conf); without them (Envoy HTTP ext_authz) the check's own method and path
minus ``server.path_prefix``, with ``Host`` and ``X-Forwarded-Proto`` — and renders what the core
decides.
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
    path = headers.get("X-Original-URI")
    if path is None:
        path = request.raw_path
        prefix = sidecar.config.server.path_prefix
        if prefix and path.startswith(prefix):
            path = path[len(prefix):]
    facts = CheckRequest(headers.getall("Authorization", ()), headers.getall(sidecar.cert_header, ()),
                         request.remote, forwarded=headers.get(sidecar.source_header),
                         method=headers.get("X-Original-Method") or request.method, path=path,
                         host=headers.get("Host"), scheme=headers.get("X-Forwarded-Proto"),
                         dpop=headers.getall("DPoP", ()))
    decision = decider.decide_now(facts)  # a cached token is answered here, without awaiting
    if isinstance(decision, Miss):
        decision = await decider.decide(facts, decision)
    if isinstance(decision, Allow):
        return web.Response(headers=decision.headers.pairs())
    config = sidecar.config
    denied = render_denial(decision.denial, config.response.realm, config.server.invalid_request_status,
                           dpop_algs=decider.dpop_algs, dpop=decision.dpop)
    return web.Response(status=denied.status, body=denied.body, headers=denied.headers)

