"""The bench's IdP, a library module of the benches (bench/run.py, flood.py, fleet.py,
cert_memory.py; no command of its own): :class:`sidecar.dev.devidp.DevIdp` over real mutual
TLS, plus an answer delay and counters for introspection calls and accepted TLS connections
(= full handshakes: the sidecar's client does not resume TLS sessions, so each new connection is
one handshake).

It runs inside the bench driver's event loop, so its counters are read directly.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from sidecar.dev.devidp import Client, DevIdp, server_context

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BenchIdp(DevIdp):
    delay: float = 0.0
    connections: int = 0

    def app(self) -> web.Application:
        app = super().app()
        app.middlewares.append(self._delay)
        return app

    @web.middleware
    async def _delay(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.delay and request.path == "/introspect":
            await asyncio.sleep(self.delay)
        return await handler(request)

    def mint_bound(self, client_id: str, cnf: str) -> str:
        """Like ``mint`` but cheap enough for 100k tokens (one clock read per call)."""
        now = int(time.time())
        token = secrets.token_urlsafe(32)
        self.tokens[token] = {
            "active": True, "client_id": client_id, "scope": "read write", "token_type": "Bearer",
            "iat": now, "exp": now + self.token_lifetime, "iss": self.issuer, "sub": client_id,
            "jti": secrets.token_hex(8), "username": f"{client_id}@example", "aud": ["api"],
            "cnf": {"x5t#S256": cnf},
        }
        return token


    def mint_dpop(self, client_id: str, jkt: str) -> str:
        """A DPoP-bound token (RFC 9449 §6.2: ``cnf.jkt``, ``token_type`` DPoP)."""
        token = self.mint_bound(client_id, "")
        self.tokens[token].update(cnf={"jkt": jkt}, token_type="DPoP")
        return token


async def start_idp(cert: Path, key: Path, ca: Path) -> tuple[BenchIdp, web.AppRunner, asyncio.AbstractServer]:
    """Serve the IdP on 127.0.0.1:<ephemeral> with TLS that asks for a client certificate."""
    idp = BenchIdp(token_lifetime=3600)
    idp.add_client(Client("sidecar", may_introspect=True))
    runner = web.AppRunner(idp.app(), access_log=None)
    await runner.setup()
    factory: Any = runner.server

    def counting() -> Any:
        idp.connections += 1
        return factory()

    loop = asyncio.get_running_loop()
    server = await loop.create_server(counting, "127.0.0.1", 0, ssl=server_context(cert, key, ca), backlog=1024)
    port = server.sockets[0].getsockname()[1]
    idp.issuer = f"https://127.0.0.1:{port}"
    return idp, runner, server
