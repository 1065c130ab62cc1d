"""One client floods the sidecar with random tokens; do legitimate new tokens still get through?

    .venv/bin/python bench/flood.py                # defaults: 600 connections, 10 s, IdP 100 ms
    .venv/bin/python bench/flood.py --quick        # a few seconds (the smoke test runs this)

Issue 11 item 3: one unauthenticated client sending random tokens over 600 connections, with a
healthy IdP answering in 100 ms. The attacker's requests carry its own client address in
X-Forwarded-For (as the shipped nginx and Envoy set it); 30 legitimate clients, each with its own
address and a new bound token, arrive spread over the flood. Printed, for the sidecar as
configured (``admission.*`` defaults) and, for comparison, with admission off:

    flood: admission=on legit_ok=30/30 (100%) idp_calls_per_s=... breaker=closed attacker_429=...

Everything runs on 127.0.0.1, for a bounded time; the load is bounded in connections and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.idp import BenchIdp, start_idp  # noqa: E402
from bench.run import free_port, spawn, wait_http  # noqa: E402
from sidecar.dev.pki import CertificateAuthority  # noqa: E402

ATTACKER = "198.51.100.66"


async def start_sidecar(tmp: Path, idp: BenchIdp, files: dict[str, tuple[Path, Path]], ca_file: Path,
                        admission: bool) -> tuple[int, int, object]:
    port, admin = free_port(), free_port()
    config = tmp / f"sidecar-{port}.toml"
    config.write_text(
        f'[server]\nport = {port}\nadmin_port = {admin}\n\n'
        f'[idp]\nissuer = "{idp.issuer}"\nclient_id = "sidecar"\n'
        f'cert_file = "{files["sidecar"][0]}"\nkey_file = "{files["sidecar"][1]}"\nca_file = "{ca_file}"\n\n'
        '[log]\ndecisions = "off"\n'
        + ("" if admission else "\n[admission]\nsource_header = \"x-unused\"\n")  # no source: no limits
    )
    proc = spawn([sys.executable, "-m", "sidecar", "serve", "--config", str(config)], "0", tmp / "sidecar.log")
    await wait_http(f"http://127.0.0.1:{admin}/readyz")
    return port, admin, proc


async def gauge(admin_port: int, name: str) -> float:
    """The gauge's value (of [idp], the ``default`` issuer, when labelled by issuer)."""
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{admin_port}/metrics") as r:
        text = await r.text()
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith((name + " ", name + '{issuer="default"} ')))


async def flood(url: str, connections: int, until: float, counts: dict[int, int]) -> None:
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one_connection() -> None:
            while time.monotonic() < until:
                headers = {"Authorization": f"Bearer {secrets.token_urlsafe(24)}", "X-Forwarded-For": ATTACKER}
                try:
                    async with session.get(url, headers=headers) as response:
                        await response.read()
                        counts[response.status] = counts.get(response.status, 0) + 1
                except (aiohttp.ClientError, TimeoutError):
                    counts[0] = counts.get(0, 0) + 1

        await asyncio.gather(*(one_connection() for _ in range(connections)))


async def legitimate(url: str, idp: BenchIdp, clients: list[tuple[str, str]], spread: float) -> list[bool]:
    """Each client: its own address, a new bound token, its certificate; 5 s to be allowed."""
    results: list[bool] = []
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for index, (x5t, escaped) in enumerate(clients):
            await asyncio.sleep(spread / len(clients))
            token = idp.mint_bound(f"client{index}", x5t)
            headers = {"Authorization": f"Bearer {token}", "x-client-cert": escaped,
                       "X-Forwarded-For": f"203.0.113.{index + 1}"}
            try:
                async with session.get(url, headers=headers) as response:
                    results.append(response.status == 200)
            except (aiohttp.ClientError, TimeoutError):
                results.append(False)
    return results


async def run(args: argparse.Namespace, admission: bool) -> str:
    from urllib.parse import quote

    tmp = Path(tempfile.mkdtemp(prefix="sidecar-flood-"))
    ca = CertificateAuthority("flood bench CA")
    ca_file = tmp / "ca.crt"
    ca_file.write_bytes(ca.root.cert_pem)
    files = {"idp": ca.issue("127.0.0.1", server_names=("127.0.0.1",)).write(tmp, "idp"),
             "sidecar": ca.issue("sidecar").write(tmp, "sidecar")}
    idp, runner, server = await start_idp(*files["idp"], ca_file)
    idp.delay = args.idp_delay
    port, admin, proc = await start_sidecar(tmp, idp, files, ca_file, admission)
    try:
        issued = [ca.issue(f"client{i}") for i in range(args.legit)]
        clients = [(c.x5t_s256, quote(c.cert_pem.decode(), safe="")) for c in issued]
        url = f"http://127.0.0.1:{port}/check"
        calls_before = idp.introspection_calls
        counts: dict[int, int] = {}
        started = time.monotonic()
        until = started + args.duration
        attack = asyncio.create_task(flood(url, args.connections, until, counts))
        await asyncio.sleep(min(1.0, args.duration / 5))  # the flood is under way first
        results = await legitimate(url, idp, clients, spread=args.duration * 0.6)
        await attack
        elapsed = time.monotonic() - started
        calls = idp.introspection_calls - calls_before
        state = await gauge(admin, "sidecar_idp_breaker_state")
        ok = sum(results)
        return (f"flood: admission={'on' if admission else 'off'} legit_ok={ok}/{len(results)} "
                f"({100 * ok / max(len(results), 1):.0f}%) idp_calls_per_s={calls / elapsed:.0f} "
                f"breaker={['closed', 'open', 'half-open'][int(state)]} attacker_requests={sum(counts.values())} "
                f"attacker_429={counts.get(429, 0)} attacker_errors={counts.get(0, 0)} "
                f"connections={args.connections} seconds={args.duration:g} idp_delay_ms={args.idp_delay * 1000:g}")
    finally:
        proc.terminate()  # type: ignore[attr-defined]
        with contextlib.suppress(Exception):
            proc.wait(timeout=10)  # type: ignore[attr-defined]
        server.close()
        await runner.cleanup()


async def main_async(args: argparse.Namespace) -> None:
    for admission in (True, False) if args.compare else (True,):
        print(await run(args, admission), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=600)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--legit", type=int, default=30)
    parser.add_argument("--idp-delay", type=float, default=0.1)
    parser.add_argument("--compare", action="store_true", help="also run with admission off")
    parser.add_argument("--quick", action="store_true", help="100 connections, 3 s, 10 clients")
    args = parser.parse_args()
    if args.quick:
        args.connections, args.duration, args.legit = 100, 3.0, 10
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
