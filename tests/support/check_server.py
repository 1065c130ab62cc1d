"""The check port in tests as in production: :func:`sidecar.app.check_server` (aiohttp's low-level
server, no application), under aiohttp's test client."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import BaseTestServer

from sidecar.app import check_server
from sidecar.runtime import Sidecar


class CheckTestServer(BaseTestServer):
    def __init__(self, sidecar: Sidecar, **kwargs: Any) -> None:
        self._sidecar = sidecar
        super().__init__(**kwargs)

    async def _make_runner(self, **kwargs: Any) -> web.ServerRunner:
        return web.ServerRunner(check_server(self._sidecar), **kwargs)
