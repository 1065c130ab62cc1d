"""Half-sent requests and idle connections against the real process (``python -m sidecar``).

Three figures, each from one run of the sidecar with a throwaway PKI and an IdP address that
does not answer (the ports serve; checks without a token are answered 401):

- ``held``: N connections each send an incomplete head of B bytes to one port; the RSS of the
  process before and after, per connection, and how many connections the sidecar still holds
  open after ``--wait`` seconds (``server.header_timeout`` closes them);
- ``flood``: under ``--nofile`` descriptors, M idle connections to the admin port, then one
  check on the check port: its status line (``connection reset`` when it is starved).

    python bench/half_open.py held --port admin --connections 100 --head-bytes 15000
    python bench/half_open.py held --port check --connections 100 --head-bytes 120000
    python bench/half_open.py held --port check --connections 50 --head-bytes 7500000 --field-bytes 60000
    python bench/half_open.py flood --connections 1100 --nofile 1024

``--header-timeout S`` sets the sidecar's ``server.header_timeout`` (10 s by default), so that a
short ``held`` run sees the connections closed. Bounded: at most 2,000 connections and 120 s of waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sidecar.dev.pki import CertificateAuthority

CHECK = b"GET /check HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n"
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@contextlib.asynccontextmanager
async def sidecar(nofile: int, extra: dict[str, str]) -> AsyncIterator[tuple[subprocess.Popen[bytes], int, int]]:
    work = Path(tempfile.mkdtemp(prefix="half-open-"))
    ca = CertificateAuthority("bench CA")
    (work / "ca.crt").write_bytes(ca.root.cert_pem)
    cert, key = ca.issue("sidecar").write(work, "sidecar")
    port, admin = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.update(SIDECAR_IDP__ISSUER=f"https://127.0.0.1:{free_port()}", SIDECAR_IDP__CLIENT_ID="sidecar",
               SIDECAR_IDP__CERT_FILE=str(cert), SIDECAR_IDP__KEY_FILE=str(key),
               SIDECAR_IDP__CA_FILE=str(work / "ca.crt"), SIDECAR_SERVER__PORT=str(port),
               SIDECAR_SERVER__ADMIN_PORT=str(admin), SIDECAR_LOG__LEVEL="error", **extra)

    def limit() -> None:
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    process = subprocess.Popen([sys.executable, "-m", "sidecar"], env=env, preexec_fn=limit)
    try:
        for _ in range(200):
            if (await status_line(admin, HEALTHZ)).startswith("HTTP/"):
                break
            await asyncio.sleep(0.1)
        yield process, port, admin
    finally:
        process.kill()
        process.wait(timeout=10)


async def status_line(port: int, request: bytes) -> str:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    except (TimeoutError, OSError) as exc:
        return type(exc).__name__
    return data.split(b"\r\n", 1)[0].decode()


async def is_open(reader: asyncio.StreamReader) -> bool:
    """Still open: nothing more to read yet (a closed one reads its 408 or 431, then EOF)."""
    try:
        while await asyncio.wait_for(reader.read(65536), 0.05):
            pass
    except TimeoutError:
        return True
    except OSError:
        return False
    return False


def partial_head(size: int, field: int) -> bytes:
    """A request line and fields of up to ``field`` bytes, B bytes in all, never the final CRLF."""
    head = bytearray(b"GET /check HTTP/1.1\r\nHost: sidecar\r\n")
    number = 0
    while len(head) < size:
        value = b"a" * min(field, max(1, size - len(head) - 16))
        head += b"X-Pad-%d: " % number + value + b"\r\n"
        number += 1
    return bytes(head)


async def held(args: argparse.Namespace) -> dict[str, object]:
    extra = {"SIDECAR_SERVER__ADMIN_MAX_CONNECTIONS": str(args.admin_max_connections)} \
        if args.admin_max_connections else {}
    if args.header_timeout:
        extra["SIDECAR_SERVER__HEADER_TIMEOUT"] = str(args.header_timeout)
    async with sidecar(0, extra) as (process, port, admin):
        target = admin if args.port == "admin" else port
        await asyncio.sleep(0.5)
        before = rss_bytes(process.pid)
        head = partial_head(args.head_bytes, args.field_bytes)
        writers = []
        cut = 0  # connections the sidecar closed while the head was being sent
        for _ in range(args.connections):
            reader, writer = await asyncio.open_connection("127.0.0.1", target)
            try:
                writer.write(head)
                await writer.drain()
            except OSError:
                cut += 1
            writers.append((reader, writer))
        await asyncio.sleep(1.0)
        after = rss_bytes(process.pid)
        started = time.monotonic()
        await asyncio.sleep(args.wait)
        still_open = sum([await is_open(reader) for reader, _ in writers])
        for _, writer in writers:
            writer.close()
        return {"scenario": "held", "port": args.port, "connections": args.connections,
                "head_bytes": len(head), "rss_before_mib": round(before / 2**20, 1),
                "rss_after_mib": round(after / 2**20, 1),
                "rss_per_connection_kib": round((after - before) / args.connections / 1024, 1),
                "closed_while_sending": cut,
                "still_open_after_s": round(time.monotonic() - started, 1), "still_open": still_open}


async def flood(args: argparse.Namespace) -> dict[str, object]:
    async with sidecar(args.nofile, {}) as (_, port, admin):
        before = await status_line(port, CHECK)
        writers = []
        for _ in range(args.connections):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", admin)
            except OSError:
                break
            writers.append(writer)
        await asyncio.sleep(1.0)
        during = await status_line(port, CHECK)
        for writer in writers:
            writer.close()
        return {"scenario": "flood", "nofile": args.nofile, "admin_connections_opened": len(writers),
                "check_before": before, "check_during_flood": during}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=("held", "flood"))
    parser.add_argument("--port", choices=("check", "admin"), default="admin")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--head-bytes", type=int, default=15000)
    parser.add_argument("--field-bytes", type=int, default=8000)
    parser.add_argument("--admin-max-connections", type=int, default=0)
    parser.add_argument("--wait", type=float, default=12.0)
    parser.add_argument("--header-timeout", type=float, default=0.0, help="server.header_timeout (the default)")
    parser.add_argument("--nofile", type=int, default=1024)
    args = parser.parse_args()
    args.connections = min(args.connections, 2000)
    args.wait = min(args.wait, 120.0)
    run = held if args.scenario == "held" else flood
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
