"""Clients flood the sidecar with random tokens; do legitimate new tokens still get through, and do
the probes still answer?

    .venv/bin/python bench/flood.py                # defaults: 600 connections, 10 s, IdP 100 ms
    .venv/bin/python bench/flood.py --quick        # a few seconds each (the smoke test runs this)

One sidecar process per scenario, with ``admission.*`` as shipped, against the bench IdP (real
mutual TLS, answering in ``--idp-delay``). The attackers send random tokens over many keep-alive
connections, their address in X-Forwarded-For (as every shipped front sets it); legitimate
clients arrive spread over the flood, each with its certificate and a token it has never used:

- ``one address``: the whole flood from one address; each legitimate client from its own;
- ``shared-address neighbour``: the flood and one legitimate client behind the same address (a
  NAT): the neighbour, whose certificate the IdP has vouched for before (one earlier token),
  presents a new token each time;
- ``40 IPv4 addresses`` and ``40 IPv6 addresses of one /64``: the flood spread over 40 addresses;
  each legitimate client from its own.

Each prints the legitimate new tokens allowed (target: at least 95 %) and the IdP calls against
the budget the flood's sources may spend (``miss_burst + miss_rate * seconds`` per source, the
legitimate clients' own calls added). Then the probes: ``/healthz`` and ``/readyz`` on a new
connection each (as the kubelet asks) while 16 admin connections from four addresses are held
open, and a cached check's latency while those 16 connections flood ``/metrics`` (then, for
comparison, ``/healthz``):

    flood one address: legit_ok=30/30 (100%) idp_calls=612 budget=680 ...
    probes: held=16 ok=20/20 p50_ms=... max_ms=...
    admin flood: cached_check_p50_ms alone=... metrics_flood=... healthz_flood=...

Everything runs on 127.0.0.1 (other loopback addresses for the held connections), for a bounded
time, with bounded connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.idp import BenchIdp, start_idp  # noqa: E402
from bench.run import free_port, spawn, wait_http  # noqa: E402
from sidecar.config import AdmissionConfig  # noqa: E402
from sidecar.dev.pki import CertificateAuthority, Issued  # noqa: E402

ATTACKER = "198.51.100.66"
IPV4_FLOOD = [f"198.51.100.{i}" for i in range(100, 140)]
IPV6_FLOOD = [str(ipaddress.IPv6Address("2001:db8:66:1::") + i * 0x1000) for i in range(40)]  # one /64
HELD_FROM = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
SHIPPED = AdmissionConfig()


@dataclass
class Env:
    args: argparse.Namespace
    tmp: Path
    ca: CertificateAuthority
    ca_file: Path
    files: dict[str, tuple[Path, Path]]
    idp: BenchIdp


@dataclass(frozen=True)
class Scenario:
    name: str
    flood_from: list[str]
    sources: int  # the flood's sources, as admission groups them
    neighbour: bool = False  # the legitimate clients: one client behind the attacker's address


SCENARIOS = (
    Scenario("one address", [ATTACKER], 1),
    Scenario("shared-address neighbour", [ATTACKER], 1, neighbour=True),
    Scenario("40 IPv4 addresses", IPV4_FLOOD, 40),
    Scenario("40 IPv6 addresses of one /64", IPV6_FLOOD, 1),
)


async def start_sidecar(env: Env) -> tuple[int, int, Any]:
    port, admin = free_port(), free_port()
    config = env.tmp / f"sidecar-{port}.toml"
    config.write_text(
        f'[server]\nport = {port}\nadmin_port = {admin}\n\n'
        f'[idp]\nissuer = "{env.idp.issuer}"\nclient_id = "sidecar"\n'
        f'cert_file = "{env.files["sidecar"][0]}"\nkey_file = "{env.files["sidecar"][1]}"\n'
        f'ca_file = "{env.ca_file}"\n\n[log]\ndecisions = "off"\n'
    )
    proc = spawn([sys.executable, "-m", "sidecar", "serve", "--config", str(config)], "0", env.tmp / "sidecar.log")
    await wait_http(f"http://127.0.0.1:{admin}/readyz")
    return port, admin, proc


def stop(proc: Any) -> None:
    proc.terminate()
    with contextlib.suppress(Exception):
        proc.wait(timeout=10)


async def flood(url: str, sources: list[str], connections: int, until: float, counts: dict[int, int]) -> None:
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def one_connection(source: str) -> None:
            while time.monotonic() < until:
                headers = {"Authorization": f"Bearer {secrets.token_urlsafe(24)}", "X-Forwarded-For": source}
                try:
                    async with session.get(url, headers=headers) as response:
                        await response.read()
                        counts[response.status] = counts.get(response.status, 0) + 1
                except (aiohttp.ClientError, TimeoutError):
                    counts[0] = counts.get(0, 0) + 1

        await asyncio.gather(*(one_connection(sources[i % len(sources)]) for i in range(connections)))


async def legitimate(env: Env, url: str, clients: list[tuple[str, Issued, str]], spread: float) -> list[bool]:
    """Each request: a client's certificate, a token it never used, its address; 5 s to be allowed."""
    results: list[bool] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for client_id, cert, address in clients:
            await asyncio.sleep(spread / len(clients))
            token = env.idp.mint_bound(client_id, cert.x5t_s256)
            headers = {"Authorization": f"Bearer {token}", "x-client-cert": quote(cert.cert_pem.decode(), safe=""),
                       "X-Forwarded-For": address}
            try:
                async with session.get(url, headers=headers) as response:
                    results.append(response.status == 200)
            except (aiohttp.ClientError, TimeoutError):
                results.append(False)
    return results


async def run_scenario(env: Env, scenario: Scenario) -> str:
    args = env.args
    port, _admin, proc = await start_sidecar(env)
    try:
        url = f"http://127.0.0.1:{port}/check"
        if scenario.neighbour:
            cert = env.ca.issue("neighbour")
            clients = [("neighbour", cert, ATTACKER)] * args.legit
            assert (await legitimate(env, url, clients[:1], 0.0)) == [True]  # vouched for once, before the flood
        else:
            certs = [env.ca.issue(f"client{i}") for i in range(args.legit)]
            clients = [(f"client{i}", c, f"203.0.113.{i + 1}") for i, c in enumerate(certs)]
        calls_before = env.idp.introspection_calls
        counts: dict[int, int] = {}
        started = time.monotonic()
        attack = asyncio.create_task(flood(url, scenario.flood_from, args.connections, started + args.duration,
                                           counts))
        await asyncio.sleep(min(1.0, args.duration / 5))  # the flood is under way first
        results = await legitimate(env, url, clients, spread=args.duration * 0.6)
        await attack
        elapsed = time.monotonic() - started
        calls = env.idp.introspection_calls - calls_before
        budget = round(scenario.sources * (SHIPPED.miss_burst + SHIPPED.miss_rate * elapsed)) + len(results)
        ok = sum(results)
        return (f"flood {scenario.name}: legit_ok={ok}/{len(results)} ({100 * ok / max(len(results), 1):.0f}%) "
                f"idp_calls={calls} budget={budget} attacker_requests={sum(counts.values())} "
                f"attacker_429={counts.get(429, 0)} attacker_errors={counts.get(0, 0)} "
                f"connections={args.connections} seconds={args.duration:g} idp_delay_ms={args.idp_delay * 1000:g}")
    finally:
        stop(proc)


async def hold(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An admin connection left idle after one request (a keep-alive held open)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: s\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0]))
    return reader, writer


async def probe(port: int, path: str) -> tuple[bool, float]:
    """One probe on a new connection, as the kubelet makes it: (200?, milliseconds)."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n".encode())
            answer = await reader.read()
            writer.close()
    except (OSError, TimeoutError):
        return False, (time.perf_counter() - started) * 1000
    return answer.startswith(b"HTTP/1.1 200 "), (time.perf_counter() - started) * 1000


async def cached_check_ms(session: aiohttp.ClientSession, url: str, headers: dict[str, str], count: int) -> float:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        async with session.get(url, headers=headers) as response:
            await response.read()
            assert response.status == 200
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def during_flood(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                       held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]], path: str, count: int) -> float:
    """A cached check's p50 while every held connection asks ``path`` again and again."""
    asking = True

    async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while asking:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: s\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0]))

    tasks = [asyncio.create_task(ask(r, w)) for r, w in held]
    await asyncio.sleep(0.3)
    try:
        return await cached_check_ms(session, url, headers, count)
    finally:
        asking = False
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_probes(env: Env) -> list[str]:
    args = env.args
    port, admin, proc = await start_sidecar(env)
    held = []
    try:
        held = [await hold(admin, HELD_FROM[i % len(HELD_FROM)]) for i in range(16)]
        answers = [await probe(admin, path) for _ in range(args.probes) for path in ("/healthz", "/readyz")]
        times = [ms for _, ms in answers]
        lines = [f"probes: held=16 ok={sum(ok for ok, _ in answers)}/{len(answers)} "
                 f"p50_ms={statistics.median(times):.2f} max_ms={max(times):.2f}"]
        cert = env.ca.issue("cached")
        headers = {"Authorization": f"Bearer {env.idp.mint_bound('cached', cert.x5t_s256)}",
                   "x-client-cert": quote(cert.cert_pem.decode(), safe=""), "X-Forwarded-For": "203.0.113.200"}
        url = f"http://127.0.0.1:{port}/check"
        async with aiohttp.ClientSession() as session:
            alone = await cached_check_ms(session, url, headers, args.checks)
            during = {path: await during_flood(session, url, headers, held, path, args.checks)
                      for path in ("/metrics", "/healthz")}
        lines.append(f"admin flood: cached_check_p50_ms alone={alone:.2f} metrics_flood={during['/metrics']:.2f} "
                     f"healthz_flood={during['/healthz']:.2f} (16 connections asking at once)")
        return lines
    finally:
        for _, writer in held:
            writer.close()
        stop(proc)


async def main_async(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sidecar-flood-"))
    ca = CertificateAuthority("flood bench CA")
    ca_file = tmp / "ca.crt"
    ca_file.write_bytes(ca.root.cert_pem)
    files = {"idp": ca.issue("127.0.0.1", server_names=("127.0.0.1",)).write(tmp, "idp"),
             "sidecar": ca.issue("sidecar").write(tmp, "sidecar")}
    idp, runner, server = await start_idp(*files["idp"], ca_file)
    idp.delay = args.idp_delay
    env = Env(args, tmp, ca, ca_file, files, idp)
    try:
        for scenario in SCENARIOS:
            print(await run_scenario(env, scenario), flush=True)
        for line in await run_probes(env):
            print(line, flush=True)
    finally:
        server.close()
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=600)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--legit", type=int, default=30)
    parser.add_argument("--idp-delay", type=float, default=0.1)
    parser.add_argument("--probes", type=int, default=10, help="rounds of /healthz and /readyz")
    parser.add_argument("--checks", type=int, default=200, help="cached checks timed, alone and during the scrapes")
    parser.add_argument("--quick", action="store_true", help="100 connections, 3 s, 20 clients per scenario")
    args = parser.parse_args()
    if args.quick:
        args.connections, args.duration, args.legit, args.checks = 100, 3.0, 20, 50
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
