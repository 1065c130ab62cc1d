#!/usr/bin/env python3
"""A fleet of four sidecar processes sharing one real Redis, against the same four without it.

    .venv/bin/python bench/fleet.py                # 10,000 tokens, each used on every replica
    .venv/bin/python bench/fleet.py --tokens 200   # a smoke run

Each mode starts four ``python -m sidecar serve`` processes (the bench IdP over real mutual TLS
runs in this driver, ``redis-server`` is Debian's) and sends every token to every replica:

- half the tokens as a **burst** (the four replicas at once: fleet-wide single-flight),
- half **spread** (one replica first, then the three others: those three are Redis hits),

``--concurrency`` tokens in flight at a time. Then every replica answers ``--hits`` cache hits
(one client per replica, one request at a time), and ``--l2-sample`` new tokens are used on the
first replica, then on the three others (one client per replica, one request at a time): with
Redis, second-level hits. Printed per mode::

    fleet: idp_calls_per_token=X replicas=4 hit_p50_ms=Y l2_hit_p50_ms=Z redis=on|off

``idp_calls_per_token``: introspections at the IdP / tokens; ``hit_p50_ms``: the client-side p50
of an in-memory hit; ``l2_hit_p50_ms``: the p50 of the sample's later requests (a Redis hit with
Redis; an IdP call without, printed as ``miss_p50_ms``).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from bench.idp import start_idp  # noqa: E402
from bench.run import PY, Env, Server, escaped, free_port, metric, spawn, wait_http  # noqa: E402
from sidecar.dev.pki import CertificateAuthority  # noqa: E402
from sidecar.dev.redis import RedisServer  # noqa: E402

REPLICAS = 4
CORES = "0-1"


async def start_replica(env: Env, redis: RedisServer | None, files: tuple[Path, Path], timeout: float) -> Server:
    port, admin = free_port(), free_port()
    config = env.tmp / f"replica-{port}.toml"
    fleet = "" if redis is None else (
        f'\n[fleet]\nenabled = true\nurl = "{redis.url}"\nsecret_file = "{files[0]}"\n'
        f'seal_key_file = "{files[1]}"\ntimeout = {timeout}\nclock_skew = 0\n')  # one host: one clock
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\nadmin_port = {admin}\n\n'
        f'[idp]\nissuer = "{env.idp.issuer}"\nclient_id = "sidecar"\n'
        f'cert_file = "{env.sidecar_files[0]}"\nkey_file = "{env.sidecar_files[1]}"\n'
        f'ca_file = "{env.ca_file}"\ntimeout = 5.0\n\n'
        f'[cache]\nmax_entries = 200000\n\n[log]\ndecisions = "deny"\n'
        # A handful of clients making thousands of new tokens: admission (bench/flood.py) would refuse most.
        f'\n[admission]\nmiss_rate = 0\nmax_share = 1.0\n{fleet}')
    proc = spawn([PY, "-m", "sidecar", "serve", "--config", str(config)], CORES, env.tmp / "replica.log")
    await wait_http(f"http://127.0.0.1:{admin}/readyz", timeout=60)
    return Server("replica", port, proc, admin)


async def timed(session: aiohttp.ClientSession, port: int, token: str, cert: str, bad: list[int]) -> float:
    started = time.perf_counter()
    async with session.get(f"http://127.0.0.1:{port}/check",
                           headers={"Authorization": f"Bearer {token}", "x-client-cert": cert}) as response:
        await response.read()
        if response.status != 200:
            bad.append(response.status)
    return (time.perf_counter() - started) * 1000


async def run_mode(env: Env, args: argparse.Namespace, redis: RedisServer | None, files: tuple[Path, Path]) -> str:
    replicas = [await start_replica(env, redis, files, args.redis_timeout) for _ in range(REPLICAS)]
    certs = [escaped(c) for c in env.clients]
    tokens = [(i % len(certs), env.idp.mint_bound("client", env.clients[i % len(certs)].x5t_s256))
              for i in range(args.tokens)]
    calls_before = env.idp.introspection_calls
    followers: list[float] = []
    bad: list[int] = []
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            queue = list(enumerate(tokens))

            async def worker() -> None:
                while queue:
                    n, (idx, token) = queue.pop()
                    ports = [r.port for r in replicas]
                    if n % 2:  # burst: every replica at once
                        await asyncio.gather(*(timed(session, p, token, certs[idx], bad) for p in ports))
                    else:  # spread: one replica first, then the others (Redis hits with Redis)
                        first = n // 2 % REPLICAS
                        await timed(session, ports[first], token, certs[idx], bad)
                        later = await asyncio.gather(*(timed(session, p, token, certs[idx], bad)
                                                       for i, p in enumerate(ports) if i != first))
                        followers.extend(later)

            started = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            fill_seconds = time.monotonic() - started
            calls = env.idp.introspection_calls - calls_before
            hits: list[float] = []

            async def hit_client(port: int) -> None:
                for i in range(args.hits):
                    idx, token = tokens[i * 7919 % len(tokens)]
                    hits.append(await timed(session, port, token, certs[idx], bad))

            await asyncio.gather(*(hit_client(r.port) for r in replicas))
            sample = [(i % len(certs), env.idp.mint_bound("client", env.clients[i % len(certs)].x5t_s256))
                      for i in range(args.l2_sample)]
            for idx, token in sample:  # on the first replica only: the others find them in Redis
                await timed(session, replicas[0].port, token, certs[idx], bad)
            l2: list[float] = []

            async def l2_client(port: int) -> None:
                for idx, token in sample:
                    l2.append(await timed(session, port, token, certs[idx], bad))

            await asyncio.gather(*(l2_client(r.port) for r in replicas[1:]))
        events = {}
        if redis is not None:
            for name in ("hit", "waited", "miss", "wait_expired", "error", "bypass", "tampered"):
                events[name] = sum([await metric(r.admin_port or 0, "sidecar_fleet_total", f'event="{name}"')
                                    for r in replicas])
    finally:
        for replica in replicas:
            replica.stop()
    per_token = calls / len(tokens)
    later = statistics.median(l2)
    second = f"l2_hit_p50_ms={later:.2f}" if redis is not None else f"l2_hit_p50_ms=n/a miss_p50_ms={later:.2f}"
    line = (f"fleet: idp_calls_per_token={per_token:.3f} replicas={REPLICAS} "
            f"hit_p50_ms={statistics.median(hits):.2f} {second} redis={'on' if redis is not None else 'off'}")
    detail = (f"  fill {fill_seconds:.1f} s for {len(tokens)} tokens x {REPLICAS} replicas (p50 of a spread token's "
              f"later requests under that load {statistics.median(followers):.2f} ms); non-200: {len(bad)}")
    if events:
        detail += "; fleet events " + ", ".join(f"{k}={int(v)}" for k, v in events.items())
    print(detail, flush=True)
    return line


async def main_async(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sidecar-fleet-bench-"))
    ca = CertificateAuthority()
    ca_file = tmp / "ca.crt"
    ca_file.write_bytes(ca.root.cert_pem)
    idp_files = ca.issue("127.0.0.1", server_names=("127.0.0.1",)).write(tmp, "idp")
    sidecar_files = ca.issue("sidecar").write(tmp, "sidecar")
    clients = [ca.issue(f"client-{i}") for i in range(4)]
    idp, runner, idp_server = await start_idp(*idp_files, ca_file)
    idp.delay = args.idp_delay
    env = Env(tmp, idp, ca, sidecar_files, ca_file, clients, args)
    files = (tmp / "fleet-secret", tmp / "fleet-key")
    for path in files:
        path.write_text(secrets.token_urlsafe(32))
    redis = RedisServer(tmp / "redis", free_port()).start()
    print(f"fleet bench  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  python {sys.version.split()[0]} "
          f"({sys.executable})  tokens {args.tokens}, {REPLICAS} replicas, {args.concurrency} tokens in flight, "
          f"IdP delay {args.idp_delay * 1000:.0f} ms, fleet.timeout {args.redis_timeout} s, "
          f"hits {args.hits} per replica", flush=True)
    try:
        modes = [None, redis] if args.without_first else [redis, None]  # the order effect, if any, shows
        lines = [await run_mode(env, args, mode, files) for mode in modes]
    finally:
        redis.kill()
        idp_server.close()
        await runner.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    for line in lines:
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=10_000, help="tokens, each used on every replica (10000)")
    parser.add_argument("--concurrency", type=int, default=16, help="tokens in flight at once (16)")
    parser.add_argument("--hits", type=int, default=2000, help="cache hits measured per replica (2000)")
    parser.add_argument("--l2-sample", type=int, default=500, help="tokens whose second-level hits are timed (500)")
    parser.add_argument("--without-first", action="store_true", help="run the fleet without Redis first")
    parser.add_argument("--idp-delay", type=float, default=0.002, help="the IdP's answer delay in seconds (0.002)")
    parser.add_argument("--redis-timeout", type=float, default=0.25, help="fleet.timeout of the replicas (0.25)")
    args = parser.parse_args()
    if not all(1 <= n <= 100_000 for n in (args.tokens, args.hits, args.l2_sample)):
        parser.error("--tokens, --hits and --l2-sample are bounded: 1..100000")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
