"""Cache-hit checks through the HTTP ext_authz front and the gRPC ext_authz front, and the
start-up cost of importing grpc + Envoy's protos. Prints figures; asserts nothing.

    .venv/bin/python -m bench.envoy_fronts [--requests 4000] [--concurrency 16]
    .venv/bin/python -m bench.envoy_fronts --quick    # 200 checks per front, one import run

The sidecar (with the development IdP over mutual TLS) runs in a child process pinned to CPU 0,
the load generator in this process on CPU 1 (when the machine has two). Every request is the
same bound token with its certificate, as Envoy sends it: a cache hit after the first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

from aiohttp import web


async def serve_child() -> None:
    """Child: IdP + sidecar (HTTP and gRPC fronts) on free ports; prints them; runs until stdin closes."""
    from sidecar import config as config_module
    from sidecar.app import check_server
    from sidecar.dev.devidp import Client, DevIdp, server_context
    from sidecar.dev.pki import CertificateAuthority
    from sidecar.fronts.grpc import GrpcFront
    from sidecar.runtime import Sidecar

    work = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    ca = CertificateAuthority()
    ca_file = work / "ca.crt"
    ca_file.write_bytes(ca.root.cert_pem)
    idp_files = ca.issue("127.0.0.1", server_names=("127.0.0.1",)).write(work, "idp")
    sidecar_files = ca.issue("sidecar").write(work, "sidecar")
    alice = ca.issue("alice")
    idp = DevIdp()
    for client in (Client("sidecar", may_introspect=True), Client("alice")):
        idp.add_client(client)
    idp_runner = web.AppRunner(idp.app(), access_log=None)
    await idp_runner.setup()
    site = web.TCPSite(idp_runner, "127.0.0.1", 0, ssl_context=server_context(*idp_files, ca_file))
    await site.start()
    idp.issuer = f"https://127.0.0.1:{idp_runner.addresses[0][1]}"
    config = config_module.from_mapping({
        "idp": {"issuer": idp.issuer, "client_id": "sidecar", "cert_file": str(sidecar_files[0]),
                "key_file": str(sidecar_files[1]), "ca_file": str(ca_file)},
        "client_cert": {"header": "x-forwarded-client-cert", "format": "xfcc"},
        "response": {"remove_upstream_headers": ["authorization", "x-forwarded-client-cert"]},
        "log": {"decisions": "off"},
    })
    sidecar = Sidecar(config)
    sidecar.start()
    runner = web.ServerRunner(check_server(sidecar), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    grpc_front = GrpcFront(sidecar)
    grpc_port = await grpc_front.start("127.0.0.1", 0)
    pem = quote(alice.cert_pem.decode(), safe="-._~")
    print(json.dumps({"http": runner.addresses[0][1], "grpc": grpc_port, "pem": pem,
                      "token": idp.mint("alice", cnf=alice.x5t_s256)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await grpc_front.stop(0)
    await runner.cleanup()
    await sidecar.close()
    await idp_runner.cleanup()


async def load(name: str, call: Callable[[], Awaitable[bool]], requests: int, concurrency: int) -> None:
    for _ in range(50):  # warm-up: first one fills the cache
        assert await call(), f"{name}: the check did not allow"
    latencies: list[float] = []
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            assert await call()
            latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    q = statistics.quantiles(latencies, n=100)
    print(f"{name:<22} {len(latencies) / elapsed:8.0f} checks/s   p50 {q[49] * 1000:6.2f} ms   "
          f"p99 {q[98] * 1000:6.2f} ms   ({len(latencies)} checks, concurrency {concurrency})")


async def drive(ports: dict[str, object], requests: int, concurrency: int) -> None:
    import aiohttp
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2 as pb
    from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc

    token, pem = str(ports["token"]), str(ports["pem"])
    xfcc = f'Cert="{pem}"'  # what Envoy sets with set_current_client_cert_details cert: true
    headers = {"authorization": f"Bearer {token}", "x-forwarded-client-cert": xfcc, "content-length": "0"}
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{ports['http']}/ext_authz/api/items?page=2"

        async def http_call() -> bool:
            async with session.get(url, headers=headers) as response:
                await response.read()
                return response.status == 200

        await load("HTTP ext_authz front", http_call, requests, concurrency)
    request = pb.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.host = "GET", "/api/items?page=2", "api.example.com"
    http.headers.update({":method": "GET", ":path": "/api/items?page=2", "authorization": f"Bearer {token}"})
    request.attributes.source.certificate = pem
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['grpc']}") as channel:
        stub = pb_grpc.AuthorizationStub(channel)

        async def grpc_call() -> bool:
            return bool((await stub.Check(request, timeout=5)).status.code == 0)

        await load("gRPC ext_authz front", grpc_call, requests, concurrency)


GRPC_FRONT = "sidecar.fronts.grpc"  # imported by sidecar.app only when server.grpc_port is set


def import_cost(runs: int) -> None:
    """Cumulative ``-X importtime`` of the gRPC front after sidecar.app (best of ``runs``)."""
    def cumulative_ms() -> float:
        result = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import sidecar.app, {GRPC_FRONT}"],
                                check=True, capture_output=True, text=True)
        (line,) = [x for x in result.stderr.splitlines() if x.rstrip().endswith(f"| {GRPC_FRONT}")]
        return int(line.split("|")[1]) / 1000

    print(f"start-up import of {GRPC_FRONT} (grpc, xds-protos, health) on top of sidecar.app: "
          f"{min(cumulative_ms() for _ in range(runs)):.0f} ms (paid only with server.grpc_port)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--import-runs", type=int, default=5, help="runs of the import timing, best taken (5)")
    parser.add_argument("--quick", action="store_true", help="200 checks per front at concurrency 4, one import run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.concurrency, args.import_runs = 200, 4, 1
    if args.child:
        asyncio.run(serve_child())
        return
    pin = os.cpu_count() and os.cpu_count() >= 2  # type: ignore[operator]
    prefix = ["taskset", "-c", "0"] if pin and os.path.exists("/usr/bin/taskset") else []
    child = subprocess.Popen([*prefix, sys.executable, "-m", "bench.envoy_fronts", "--child"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        ports = json.loads(child.stdout.readline())
        if pin:
            os.sched_setaffinity(0, {1})
        print(f"Python {sys.version.split()[0]} ({sys.executable}); server pinned: {bool(prefix)}")
        asyncio.run(drive(ports, args.requests, args.concurrency))
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)
    import_cost(args.import_runs)


if __name__ == "__main__":
    main()
