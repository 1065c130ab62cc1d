"""Fixtures for the security-property tests: an IdP that also accepts ``client_secret_basic``.

The standard fake IdP authenticates only by client certificate (``tls_client_auth``). Here the
introspection endpoint also takes HTTP Basic with :data:`CLIENT_SECRET`, so the deny paths can be
walked with a client secret in play and the logs scanned for it.
"""

from __future__ import annotations

import base64
import time
from typing import Any
from urllib.parse import quote_plus

import pytest
from aiohttp import web

from sidecar.dev.devidp import server_context
from sidecar.dev.fakeidp import FakeIdp, Handler, standard_idp
from tests.support.pki_fixtures import TestPki

CLIENT_SECRET = "cs-4f1d9a7e-never-log-me-2b6c"
BASIC = "Basic " + base64.b64encode(f"sidecar:{quote_plus(CLIENT_SECRET)}".encode()).decode()


class SecretAwareIdp(FakeIdp):
    basic_calls: int = 0

    def app(self) -> web.Application:
        app = super().app()
        app.middlewares.append(self._basic)  # after the fault middleware: faults still apply
        return app

    @web.middleware
    async def _basic(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization")
        if request.path != "/introspect" or given is None:
            return await handler(request)
        if given != BASIC:
            return web.json_response({"error": "invalid_client"}, status=401)
        self.basic_calls += 1
        record = self.tokens.get(str((await request.post()).get("token", "")))
        if record is None or record["exp"] <= time.time():
            return web.json_response({"active": False})
        return web.json_response(record)


@pytest.fixture
async def idp(pki: TestPki, aiohttp_server: Any) -> FakeIdp:
    fake = SecretAwareIdp()
    fake.clients = standard_idp().clients
    server = await aiohttp_server(fake.app(), ssl=server_context(*pki.idp_files, pki.ca_file))
    fake.issuer = f"https://127.0.0.1:{server.port}"
    fake.server = server  # type: ignore[attr-defined]
    return fake
