"""Issue 11 item 4: one client with its own valid token presents thousands of distinct, large
certificate headers. How much does the sidecar's memory grow?

    .venv/bin/python bench/cert_memory.py            # 1,500 values of ~45 KB, then of ~15 KB
    .venv/bin/python bench/cert_memory.py --quick    # 200 of each

Values over ``client_cert.max_size`` (16 KiB) are refused before parsing and never remembered;
values under it are remembered in a memo bounded by ``client_cert.memo_max_bytes`` (8 MiB).
Prints the RSS growth of the sidecar process after each phase, next to that bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.idp import start_idp  # noqa: E402
from bench.run import free_port, rss_kib, spawn, wait_http  # noqa: E402
from sidecar.dev.pki import CertificateAuthority  # noqa: E402

MEMO_BYTES = 8 * 1024 * 1024


async def send(url: str, token: str, values: list[str]) -> dict[int, int]:
    counts: dict[int, int] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for value in values:
            async with session.get(url, headers={"Authorization": f"Bearer {token}", "x-client-cert": value}) as r:
                await r.read()
                counts[r.status] = counts.get(r.status, 0) + 1
    return counts


async def main_async(count: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sidecar-certmem-"))
    ca = CertificateAuthority("cert memory bench CA")
    ca_file = tmp / "ca.crt"
    ca_file.write_bytes(ca.root.cert_pem)
    idp_files = ca.issue("127.0.0.1", server_names=("127.0.0.1",)).write(tmp, "idp")
    sidecar_files = ca.issue("sidecar").write(tmp, "sidecar")
    idp, runner, server = await start_idp(*idp_files, ca_file)
    alice = ca.issue("alice")
    port, admin = free_port(), free_port()
    config = tmp / "sidecar.toml"
    config.write_text(
        f'[server]\nport = {port}\nadmin_port = {admin}\n\n'
        f'[idp]\nissuer = "{idp.issuer}"\nclient_id = "sidecar"\ncert_file = "{sidecar_files[0]}"\n'
        f'key_file = "{sidecar_files[1]}"\nca_file = "{ca_file}"\n\n[client_cert]\nformat = "escaped_pem"\n\n'
        '[log]\ndecisions = "off"\n'
    )
    proc = spawn([sys.executable, "-m", "sidecar", "serve", "--config", str(config)], "0", tmp / "sidecar.log")
    try:
        await wait_http(f"http://127.0.0.1:{admin}/readyz")
        url = f"http://127.0.0.1:{port}/check"
        token = idp.mint_bound("alice", alice.x5t_s256)
        escaped = quote(alice.cert_pem.decode(), safe="")
        await send(url, token, [escaped] * 50)  # warm up: the token is cached, the process settled
        base = rss_kib(proc.pid)
        print(f"cert memory: baseline RSS {base / 1024:.1f} MiB, memo bound {MEMO_BYTES / 2**20:.0f} MiB", flush=True)
        for size in (45_000, 15_000, 15_001):  # the last: as many again, to see whether it still grows
            pad = "%0A" * ((size - len(escaped)) // 3)
            values = [f"{escaped}{pad}%0A{i:07d}" for i in range(count)]  # distinct, all of one size
            counts = await send(url, token, values)
            grown = (rss_kib(proc.pid) - base) / 1024
            answers = dict(sorted(counts.items()))
            print(f"cert memory: {count} distinct values of ~{size // 1000} KB -> answers {answers},"
                  f" RSS growth {grown:.1f} MiB (bound {MEMO_BYTES / 2**20:.0f} MiB)", flush=True)
    finally:
        proc.terminate()
        with contextlib.suppress(Exception):
            proc.wait(timeout=10)
        server.close()
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1500)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    asyncio.run(main_async(200 if args.quick else args.count))


if __name__ == "__main__":
    main()
