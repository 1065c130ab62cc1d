"""``sidecar demo``: a throwaway PKI, the development IdP over mutual TLS, and the sidecar.

It shows one allow (the token with the certificate it was issued to) and one deny (the same
token with another client's certificate), then keeps running and prints curl lines to try.

Standard output carries only that story; the JSON logs go to a file (:data:`LOG_FILE`, or
``--log``), whose path the story names. The keys, certificates and tokens live in a temporary
directory that is removed when the demo stops. A port that is taken is named, with the variable
that moves it, and the demo exits 2.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import ssl
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

import aiohttp
from aiohttp import web

from sidecar import config as config_module
from sidecar.app import ListenError, serve
from sidecar.dev.devidp import Client, DevIdp, server_context
from sidecar.dev.pki import CertificateAuthority, Issued
from sidecar.support import logs

LOG_FILE = Path(tempfile.gettempdir()) / "sidecar-demo.log"


def escaped_pem(issued: Issued) -> str:
    """What nginx puts in ``$ssl_client_escaped_cert``."""
    return quote(issued.cert_pem.decode(), safe="")


async def fetch_token(issuer: str, cert: tuple[Path, Path], ca_file: Path, client_id: str) -> str:
    """Client credentials grant, authenticating with the client's certificate (RFC 8705 §2.1)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.load_cert_chain(*cert)
    async with aiohttp.ClientSession() as session, session.post(
        f"{issuer}/token", data={"grant_type": "client_credentials", "client_id": client_id}, ssl=context
    ) as response:
        response.raise_for_status()
        return str((await response.json())["access_token"])


def say(text: str) -> None:
    print(text, flush=True)


async def run_demo(log_file: Path = LOG_FILE) -> int:
    """The demo until SIGINT/SIGTERM; the exit status (2: a port is taken or the configuration is bad)."""
    logs.setup("info", stream=log_file.open("a", encoding="utf-8"))
    work = Path(tempfile.mkdtemp(prefix="sidecar-demo-"))
    try:
        return await _demo(work, log_file)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the throwaway keys and tokens


async def _demo(work: Path, log_file: Path) -> int:
    ca = CertificateAuthority("sidecar demo CA")
    ca_file = work / "ca.crt"
    ca_file.write_bytes(ca.root.cert_pem)
    idp_files = ca.issue("127.0.0.1", server_names=("127.0.0.1", "localhost")).write(work, "idp")
    sidecar_files = ca.issue("sidecar").write(work, "sidecar")
    alice, bob = ca.issue("alice"), ca.issue("bob")
    alice_files = alice.write(work, "alice")
    bob.write(work, "bob")

    env = {
        "SIDECAR_IDP__CLIENT_ID": "sidecar", "SIDECAR_IDP__CERT_FILE": str(sidecar_files[0]),
        "SIDECAR_IDP__KEY_FILE": str(sidecar_files[1]), "SIDECAR_IDP__CA_FILE": str(ca_file), **os.environ,
    }
    try:
        idp_port = int(os.environ.get("SIDECAR_DEMO_IDP_PORT", "9443"))
        env["SIDECAR_IDP__ISSUER"] = f"https://127.0.0.1:{idp_port}"
        config = config_module.load(None, env)
    except (ValueError, config_module.ConfigError) as exc:
        print(f"sidecar demo: {exc}", file=sys.stderr)
        return 2
    idp = DevIdp(issuer=f"https://127.0.0.1:{idp_port}")
    for client in (Client("sidecar", may_introspect=True), Client("alice"), Client("bob")):
        idp.add_client(client)
    idp_runner = web.AppRunner(idp.app(), access_log=None)
    await idp_runner.setup()
    stop = asyncio.Event()
    try:
        try:
            await web.TCPSite(idp_runner, "127.0.0.1", idp_port,
                              ssl_context=server_context(*idp_files, ca_file)).start()
        except OSError as exc:
            taken = "is taken" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
            print(f"sidecar demo: port {idp_port} for the demo IdP {taken}: set SIDECAR_DEMO_IDP_PORT",
                  file=sys.stderr)
            return 2
        say(f"sidecar demo: JSON logs go to {log_file}")
        server = asyncio.create_task(serve(config, stop=stop))
        check = f"http://{config.server.host}:{config.server.port}/"
        admin = f"http://{config.server.admin_host}:{config.server.admin_port}/readyz"
        if not await _wait_ready(admin, server):
            return _failed(server)
        token = await fetch_token(idp.issuer, alice_files, ca_file, "alice")
        header = config.client_cert.header
        (work / "alice.headers").write_text(f"Authorization: Bearer {token}\n{header}: {escaped_pem(alice)}\n")
        (work / "mallory.headers").write_text(f"Authorization: Bearer {token}\n{header}: {escaped_pem(bob)}\n")
        await _show(check, work)
        await server
        return 0
    finally:
        stop.set()
        await idp_runner.cleanup()
        logging.getLogger().handlers[:] = []


def _failed(server: asyncio.Task[None]) -> int:
    """Why the sidecar did not start, in one line (a port names its variable)."""
    exc = server.exception() if server.done() else None
    if isinstance(exc, ListenError):
        key = str(exc).partition("(")[2].partition(")")[0]
        variable = config_module.env_name(*key.split(".")) if "." in key else key
        print(f"sidecar demo: {exc}; set {variable} to another port", file=sys.stderr)
    else:
        print(f"sidecar demo: the sidecar did not start: {exc!r}", file=sys.stderr)
        server.cancel()
    return 2


async def _wait_ready(url: str, server: asyncio.Task[None]) -> bool:
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            if server.done():
                return False
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return True
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    return False


async def _show(check: str, work: Path) -> None:
    """Run the two checks once and print the curl lines that repeat them."""
    async with aiohttp.ClientSession() as session:
        for name, meaning in (("alice", "alice's token with alice's certificate"),
                              ("mallory", "alice's token with bob's certificate")):
            lines = (work / f"{name}.headers").read_text().splitlines()
            headers = dict(line.split(": ", 1) for line in lines)
            async with session.get(check, headers=headers) as response:
                verdict = "ALLOW" if response.status == 200 else "DENY"
                detail = response.headers.get("x-credential-client-id") or response.headers.get("WWW-Authenticate")
                say(f"\n{verdict} {response.status}  {meaning}\n  {detail}")
            say(f"  try: curl -i -H @{work}/{name}.headers {check}")
    say(f"\nDemo files (throwaway PKI, tokens) are in {work}, removed when the demo stops. Ctrl-C stops the demo.\n")
