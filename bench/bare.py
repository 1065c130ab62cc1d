"""Server (a) of the bench: a bare aiohttp handler doing what any check handler must do.

It reads the same request facts as the sidecar's check route (every ``Authorization`` field, the
peer address, the certificate header) and answers 200 with as many headers as a sidecar allow
(11 ``x-credential-*``) and values of the same lengths as the bench tokens' (so both answers
are the same size on the wire), from a dict built once. Same process setup as the sidecar:
uvloop, no access log, the same header size limits.

    python bench/bare.py --port 8090 [--cert-header x-client-cert] [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import os

import uvloop
from aiohttp import web

from sidecar.config import STANDARD_HEADERS

SAMPLE = {  # what the sidecar sends for a bench token (bench/idp.py mint_bound)
    "sub": "client", "client-id": "client", "scope": "read write", "iss": "https://127.0.0.1:40000",
    "aud": "api", "exp": "1795320795", "iat": "1795317195", "jti": "0123456789abcdef", "token-type": "Bearer",
    "username": "client@example", "cnf-x5t-s256": "A" * 43,
}
HEADERS = {"x-credential-" + suffix: SAMPLE[suffix] for _, suffix in STANDARD_HEADERS}


def make_app(cert_header: str) -> web.Application:
    async def check(request: web.Request) -> web.Response:
        headers = request.headers
        authorization = headers.getall("Authorization", ())
        certificate = headers.get(cert_header) if request.remote else None
        if not authorization or certificate is None:
            return web.Response(status=401)
        return web.Response(headers=HEADERS)

    app = web.Application(handler_args={"max_field_size": 65536, "max_line_size": 65536})
    app.router.add_route("*", "/{tail:.*}", check)
    return app


async def serve(port: int, cert_header: str) -> None:
    runner = web.AppRunner(make_app(cert_header), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_port=True).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert-header", default="x-client-cert")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    for _ in range(args.workers - 1):
        if os.fork() == 0:
            break
    uvloop.run(serve(args.port, args.cert_header))


if __name__ == "__main__":
    main()
