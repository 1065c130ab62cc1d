"""The HTTP front: one check route for any method on any path (the admin routes: admin.py).

nginx ``auth_request`` calls a fixed location; Envoy's HTTP ext_authz calls ``path_prefix`` +
the original path with the original method. Both get the same answer: 200 with the credential
headers, or 401/403/400 with an RFC 6750 challenge, or 429/503 with ``Retry-After``.

The front only translates (answer.py is the edge): it hands the core every certificate header
copy, the peer address, the forwarded client address, every ``DPoP`` header, the original request
as the upstream receives it (nginx: ``X-Original-Method``, ``X-Original-URI``, ``Host`` — the
snippet sets ``$host``; Traefik, Caddy, HAProxy: ``X-Forwarded-Method``, ``X-Forwarded-Uri``,
``X-Forwarded-Host``, as forwardAuth sends its own address as ``Host``; Envoy: the check request's
own method and path minus ``routing.path_prefix``, ``Host``; each with ``X-Forwarded-Proto``), the
policy the proxy names (``routing.policy_header``), the names of any credential headers the client
sent (fronts/forged.py) and of any describing header that came twice (fronts/repeated.py), the
headers themselves (read after the answer for the decision log's request id and the caller's trace
context), and writes the answer (an allow's removal list as Envoy's
``x-envoy-auth-headers-to-remove``, a DPoP nonce as ``DPoP-Nonce``; on every answer
``X-Accel-Expires``, how long nginx's decision cache may keep it: answer.py). Whether any of it
counts (a trusted proxy) is the core's rule.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.web_request import BaseRequest

from sidecar.core.outcome import Pending
from sidecar.core.request import CheckRequest
from sidecar.fronts.answer import EXPIRES, NEVER, Allow, LiveEdge
from sidecar.fronts.render import RenderedDenial, allow_pairs
from sidecar.runtime import Sidecar

Handler = Callable[[BaseRequest], Awaitable[web.Response]]


def check_handler(sidecar: Sidecar) -> Handler:
    """The check port's handler, for aiohttp's low-level server (``web.Server``): any method on
    any path is a check, so there is nothing to route. Without an application, a router and its
    match info per request, a cache hit costs about 7 µs less server CPU (docs/performance.md).
    """
    live = LiveEdge(sidecar)

    async def check(request: BaseRequest) -> web.Response:
        if not request.raw_path.startswith("/"):  # authority-form (CONNECT) or "*": never a check
            return web.Response(status=404)  # as aiohttp's router answered: fail closed
        edge = live.edge  # this configuration's, to the answer (a reload swaps it between checks)
        headers = request.headers
        method: str | None
        path: str | None
        if (uri := headers.get("X-Original-URI")) is not None:  # nginx auth_request: the check location sets it
            method, path, host = headers.get("X-Original-Method"), uri, headers.get("Host")
        elif (uri := headers.get("X-Forwarded-Uri")) is not None:  # Traefik, Caddy, HAProxy (deploy/haproxy)
            method, path, host = headers.get("X-Forwarded-Method"), uri, headers.get("X-Forwarded-Host")
        else:  # Envoy HTTP ext_authz: the original method, and path_prefix + the original path
            method, path, host = request.method, _original_path(request.raw_path, edge.path_prefix), headers.get("Host")
        facts = CheckRequest(headers.getall("Authorization", ()), headers.getall(edge.cert_header, ()),
                             request.remote, forwarded=headers.get(edge.source_header), method=method, path=path,
                             host=host, scheme=headers.get("X-Forwarded-Proto"),
                             policy=headers.get(edge.policy_header), dpop_proofs=headers.getall("DPoP", ()),
                             forged=edge.forged.in_raw(request.raw_headers),
                             repeated=edge.repeated.in_headers(headers), headers=headers)
        answer = edge.answer_now(facts)  # a cached token is answered here, without awaiting
        if isinstance(answer, Pending):
            answer = await edge.answer(facts, answer)
        if isinstance(answer, RenderedDenial):
            denied = web.Response(status=answer.status, body=answer.body, headers=answer.headers)
            denied.headers[EXPIRES] = NEVER
            return denied
        if isinstance(answer, Allow):  # Envoy drops the client's copies; a DPoP client gets a nonce
            return web.Response(headers=[*allow_pairs(answer.headers, answer.names, answer.nonce), (EXPIRES, NEVER)])
        # A tuple: aiohttp's CIMultiDict is built faster from a sized sequence than from the zip itself.
        return web.Response(headers=(*answer.headers.pairs(), (EXPIRES, edge.expires(answer))))

    return check


def _original_path(raw_path: str, prefix: str) -> str | None:
    """The original request target of an Envoy HTTP check (``path_prefix`` + original path);
    None when the check path does not start with ``routing.path_prefix``."""
    if not prefix:
        return raw_path
    return raw_path[len(prefix):] if raw_path.startswith(prefix) else None
