"""The development IdP with fault injection: the tests' IdP, and the soak's (bench/soak.py).

The IdP requires and verifies the sidecar's client certificate (tls_client_auth); faults are
scripted by the caller: a status, garbage, a delay, a dropped connection. Failures of the IdP are
what the sidecar's breaker, retries and stale-if-error exist for; this makes them on demand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from sidecar.dev.devidp import Client, DevIdp, _peer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Fault:
    status: int | None = None  # answer this status instead
    body: bytes | None = None  # answer this body (200) instead
    content_type: str = "application/json"
    delay: float = 0.0  # seconds before answering
    drop: bool = False  # close the connection without answering
    headers: dict[str, str] | None = None
    chunked: bool = False  # stream ``body`` in 4 KiB writes with chunked transfer encoding


class FakeIdp(DevIdp):
    """DevIdp plus a ``fault`` applied to introspection calls (``jwks_fault`` to JWK Set
    fetches), and call counters."""

    fault: Fault | None = None
    introspect_requests: int = 0
    last_form: dict[str, str] | None = None
    jwks_fault: Fault | None = None
    jwks_requests: int = 0
    jwks_peer: str | None = None  # common name of the client certificate on the last JWK Set fetch

    def app(self) -> web.Application:
        app = super().app()
        app.middlewares.append(self._faults)
        return app

    @web.middleware
    async def _faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/jwks":
            self.jwks_requests += 1
            self.jwks_peer = _peer(request)[0]
            return await _apply(self.jwks_fault, request, handler)
        if request.path != "/introspect":
            return await handler(request)
        self.introspect_requests += 1
        self.last_form = {k: str(v) for k, v in (await request.post()).items()}
        return await _apply(self.fault, request, handler)


async def _apply(fault: Fault | None, request: web.Request, handler: Handler) -> web.StreamResponse:
    if fault is None:
        return await handler(request)
    if fault.delay:
        await asyncio.sleep(fault.delay)
    if fault.drop:
        assert request.transport is not None
        request.transport.close()
        raise asyncio.CancelledError
    if fault.chunked and fault.body is not None:
        response = web.StreamResponse(status=fault.status or 200, headers=fault.headers)
        response.content_type = fault.content_type
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(fault.body), 4096):
            await response.write(fault.body[start:start + 4096])
            await asyncio.sleep(0)
        await response.write_eof()
        return response
    if fault.status is not None or fault.body is not None:
        return web.Response(
            status=fault.status or 200, body=fault.body or b"", content_type=fault.content_type,
            headers=fault.headers,
        )
    return await handler(request)


def standard_idp() -> FakeIdp:
    """The clients the tests and the soak use: the sidecar (may introspect), alice and bob
    (certificate-bound tokens), carol (unbound tokens)."""
    idp = FakeIdp()
    for client in (Client("sidecar", may_introspect=True), Client("alice"), Client("bob"),
                   Client("carol", bound=False)):
        idp.add_client(client)
    return idp
