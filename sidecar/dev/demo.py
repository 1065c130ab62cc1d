"""``sidecar demo``: a throwaway PKI, the development IdP over mutual TLS, and the sidecar.

It shows one allow (the token with the certificate it was issued to) and one deny (the same
token with another client's certificate), then keeps running and prints curl lines to try.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
from pathlib import Path
from urllib.parse import quote

import aiohttp
from aiohttp import web

from sidecar import config as config_module
from sidecar.app import serve
from sidecar.dev.devidp import Client, DevIdp, server_context
from sidecar.dev.pki import CertificateAuthority, Issued


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


async def run_demo() -> None:
    work = Path(tempfile.mkdtemp(prefix="sidecar-demo-"))
    ca = CertificateAuthority("sidecar demo CA")
    ca_file = work / "ca.crt"
    ca_file.write_bytes(ca.root.cert_pem)
    idp_files = ca.issue("127.0.0.1", server_names=("127.0.0.1", "localhost")).write(work, "idp")
    sidecar_files = ca.issue("sidecar").write(work, "sidecar")
    alice, bob = ca.issue("alice"), ca.issue("bob")
    alice_files = alice.write(work, "alice")
    bob.write(work, "bob")

    idp_port = int(os.environ.get("SIDECAR_DEMO_IDP_PORT", "9443"))
    idp = DevIdp(issuer=f"https://127.0.0.1:{idp_port}")
    for client in (Client("sidecar", may_introspect=True), Client("alice"), Client("bob")):
        idp.add_client(client)
    idp_runner = web.AppRunner(idp.app(), access_log=None)
    await idp_runner.setup()
    await web.TCPSite(idp_runner, "127.0.0.1", idp_port, ssl_context=server_context(*idp_files, ca_file)).start()

    env = {
        "SIDECAR_IDP__ISSUER": idp.issuer, "SIDECAR_IDP__CLIENT_ID": "sidecar",
        "SIDECAR_IDP__CERT_FILE": str(sidecar_files[0]), "SIDECAR_IDP__KEY_FILE": str(sidecar_files[1]),
        "SIDECAR_IDP__CA_FILE": str(ca_file), **os.environ,
    }
    config = config_module.load(None, env)
    stop = asyncio.Event()
    server = asyncio.create_task(serve(config, stop=stop))
    try:
        token = await fetch_token(idp.issuer, alice_files, ca_file, "alice")
        check = f"http://{config.server.host}:{config.server.port}/"
        header = config.client_cert.header
        (work / "alice.headers").write_text(f"Authorization: Bearer {token}\n{header}: {escaped_pem(alice)}\n")
        (work / "mallory.headers").write_text(f"Authorization: Bearer {token}\n{header}: {escaped_pem(bob)}\n")
        await _wait_ready(f"http://{config.server.admin_host}:{config.server.admin_port}/readyz")
        await _show(check, work)
        await server
    finally:
        stop.set()
        await idp_runner.cleanup()


async def _wait_ready(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the sidecar did not become ready")


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
                print(f"\n{verdict} {response.status}  {meaning}\n  {detail}")
            print(f"  try: curl -i -H @{work}/{name}.headers {check}")
    print(f"\nDemo files (throwaway PKI, tokens) are in {work}. Ctrl-C stops the demo.\n", flush=True)
