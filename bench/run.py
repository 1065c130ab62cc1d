#!/usr/bin/env python3
"""One command for every performance figure of issue 6: the sidecar's check route against a bare
aiohttp handler, in one run, on loopback.

    .venv/bin/python bench/run.py            # full run, a few minutes
    .venv/bin/python bench/run.py --quick    # smoke run (seconds per scenario, small N)

(a) ``bench/bare.py``: aiohttp + uvloop, reads the same request headers, answers 200 with the
    same number of headers (11) from a constant dict.
(b) the sidecar exactly as in production: ``python -m sidecar serve --config <toml>`` (uvloop,
    no access log, JSON logs on stderr to a file, decision logging at its configured default),
    against the development IdP over real mutual TLS (``bench/idp.py``, run in this process).

Servers (and nginx) run on core 0, wrk and this driver (and so the IdP) on core 1
(``taskset``). A/B rounds alternate the order (ab, ba, ab, ...) and each figure is the median of
the rounds. wrk drives both with a Lua script that rotates (token, certificate header) pairs
over N tokens and 4 client certificates. Server CPU µs/request comes from utime+stime in
``/proc/<pid>/stat`` of the server process and its children (workers, nginx worker) over the
run. ``bench/peer.py`` then runs the peer users would pick instead, Apache + mod_auth_openidc,
beside nginx + the sidecar as shipped in ``deploy/nginx``, with and without the decision cache at
the edge (TLS with client certificates, ``ab -k
-E``). A block "targets" sums up the figures with targets; the last line printed is the
cache-hit ratio (b)/(a).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from bench import dpop  # noqa: E402
from bench.idp import BenchIdp, start_idp  # noqa: E402
from bench.peer import scenario_peer  # noqa: E402
from sidecar.config import LogConfig  # noqa: E402
from sidecar.dev.pki import CertificateAuthority, Issued  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
CORES = sorted(os.sched_getaffinity(0))
SERVER_CORE = str(CORES[0])
LOAD_CORE = str(CORES[-1])
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_admin_ports(count: int) -> int:
    """A port p with p .. p+count-1 free (worker i of the sidecar answers on admin_port + i)."""
    while True:
        base = free_port()
        try:
            for offset in range(1, count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "wrk"], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("wrk") or "wrk"


def nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


# --------------------------------------------------------------------------- processes


def _descendants(pid: int) -> list[int]:
    out = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                out.extend(_descendants(int(child)))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its live descendants (workers), in seconds."""
    total = 0
    for p in _descendants(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def rss_kib(pid: int) -> int:
    return sum(int(Path(f"/proc/{p}/statm").read_text().split()[1]) * 4 for p in _descendants(pid))


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    admin_port: int | None = None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url) as r:
                    if r.status == 200 or "readyz" not in url:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up")
            await asyncio.sleep(0.1)


def spawn(argv: list[str], cores: str, log: Path, tree: Path = ROOT) -> subprocess.Popen[bytes]:
    """``tree``: the source tree whose ``sidecar`` package runs (another checkout: its figures, same run)."""
    env = None if tree == ROOT else {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.Popen(["taskset", "-c", cores, *argv], stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            cwd=tree, env=env, start_new_session=True)


async def start_bare(tmp: Path, cert_header: str, cores: str = SERVER_CORE, workers: int = 1) -> Server:
    port = free_port()
    proc = spawn([PY, str(ROOT / "bench" / "bare.py"), "--port", str(port), "--cert-header", cert_header,
                  "--workers", str(workers)], cores, tmp / "bare.log")
    await wait_http(f"http://127.0.0.1:{port}/healthz")
    return Server("bare", port, proc)


@dataclass
class Env:
    tmp: Path
    idp: BenchIdp
    ca: CertificateAuthority
    sidecar_files: tuple[Path, Path]
    ca_file: Path
    clients: list[Issued]
    args: argparse.Namespace
    results: list[str] = field(default_factory=list)


async def start_sidecar(env: Env, *, header: str = "x-client-cert", fmt: str = "auto", workers: int = 1,
                        cores: str = SERVER_CORE, decisions: str | None = None, ca_file: Path | None = None,
                        extra: str = "", tree: Path = ROOT) -> Server:
    port, admin = free_port(), free_admin_ports(workers)
    server = f'host = "127.0.0.1"\nport = {port}\nadmin_port = {admin}\n'
    if workers != 1:
        server += f"workers = {workers}\n"
    config = env.tmp / f"sidecar-{port}.toml"
    config.write_text(
        f"[server]\n{server}\n"
        f'[idp]\nissuer = "{env.idp.issuer}"\nclient_id = "sidecar"\n'
        f'cert_file = "{env.sidecar_files[0]}"\nkey_file = "{env.sidecar_files[1]}"\n'
        f'ca_file = "{env.ca_file}"\ntimeout = 5.0\n\n'
        f'[cache]\nmax_entries = 200000\n\n'
        # Four clients making every request a new token (the miss scenario): admission, which
        # bench/flood.py measures, would refuse most of them.
        f'[admission]\nmiss_rate = 0\nmax_share = 1.0\n\n'
        f'[client_cert]\nheader = "{header}"\nformat = "{fmt}"\n'
        + (f'ca_file = "{ca_file}"\n' if ca_file else "")
        + (f'\n[log]\ndecisions = "{decisions}"\n' if decisions else "")
        + extra
    )
    proc = spawn([PY, "-m", "sidecar", "serve", "--config", str(config)], cores, env.tmp / "sidecar.log", tree)
    for worker in range(workers):  # worker i answers on admin_port + i
        await wait_http(f"http://127.0.0.1:{admin + worker}/readyz")
    return Server("sidecar", port, proc, admin)


# --------------------------------------------------------------------------- wrk


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    requests: int
    bad: int  # non-2xx answers + socket errors

    def line(self) -> str:
        bad = f"  NON-2XX/ERRORS {self.bad}" if self.bad else ""
        return (f"{self.rps:9.0f} req/s  p50 {self.p50_ms:6.2f} ms  p99 {self.p99_ms:6.2f} ms  "
                f"{self.cpu_us:6.1f} µs CPU/req{bad}")


def lua_script(env: Env, header: str, certs: list[str], tokens: list[tuple[int, str]], *,
               delay_ms: int = 0, path: str = "/check", extra: dict[str, str] | None = None,
               sources: bool = False) -> Path:
    """Requests are formatted once in init(); each request takes the next (token, cert) pair.
    ``sources``: each client (certificate) sends its own address, as a proxy vouches for it."""
    lua_extra = "".join(f', ["{k}"] = "{v}"' for k, v in (extra or {}).items())
    if sources:
        lua_extra += ', ["X-Forwarded-For"] = "10.0.0." .. idx'

    fd, name = tempfile.mkstemp(suffix=".lua", dir=env.tmp)
    data = Path(name + ".txt")
    data.write_text("".join(f"{i} {t}\n" for i, t in tokens))
    certs_file = Path(name + ".certs")
    certs_file.write_text("".join(c + "\n" for c in certs))
    script = f"""
local reqs = {{}}
local i = 0
function init(args)
  local certs = {{}}
  for line in io.lines("{certs_file}") do certs[#certs + 1] = line end
  for line in io.lines("{data}") do
    local idx, tok = line:match("^(%d+) (.+)$")
    reqs[#reqs + 1] = wrk.format("GET", "{path}", {{["Authorization"] = "Bearer " .. tok,
                                                  ["{header}"] = certs[tonumber(idx) + 1]{lua_extra}}})
  end
end
function request()
  i = i % #reqs + 1
  return reqs[i]
end
"""
    if delay_ms:
        script += f"function delay() return {delay_ms} end\n"
    script += """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.status + e.connect + e.read + e.write + e.timeout))
end
"""
    with os.fdopen(fd, "w") as f:
        f.write(script)
    return Path(name)


async def wrk(env: Env, port: int, pid: int, script: Path, *, connections: int, duration: float,
              threads: int = 1, cores: str = LOAD_CORE, extra_pids: tuple[int, ...] = ()) -> Run:
    pids = (pid, *extra_pids)
    cpu0 = sum(cpu_seconds(p) for p in pids)
    proc = await asyncio.create_subprocess_exec(
        "taskset", "-c", cores, env.args.wrk, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s",
        "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{port}/check",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    cpu = sum(cpu_seconds(p) for p in pids) - cpu0
    match = re.search(rb"RESULT (\d+) (\d+) (\d+) (\d+) (\d+)", out)
    if match is None:
        raise RuntimeError(f"wrk failed: {out.decode(errors='replace')}")
    requests, duration_us, p50, p99, bad = (int(x) for x in match.groups())
    return Run(requests / (duration_us / 1e6), p50 / 1000, p99 / 1000, cpu * 1e6 / max(requests, 1), requests, bad)


def median_run(runs: list[Run]) -> Run:
    return Run(
        statistics.median(r.rps for r in runs), statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs), statistics.median(r.cpu_us for r in runs),
        sum(r.requests for r in runs), sum(r.bad for r in runs),
    )


async def ab(env: Env, title: str, a: tuple[int, int, Path], b: tuple[int, int, Path], *,
             connections: int = 50, a_pids: tuple[int, ...] = (), b_pids: tuple[int, ...] = ()) -> tuple[Run, Run]:
    """Alternating A/B rounds (ab, ba, ab, ...) of the same wrk run; medians per side."""
    runs: dict[str, list[Run]] = {"a": [], "b": []}
    for round_ in range(env.args.rounds):
        order = ("a", "b") if round_ % 2 == 0 else ("b", "a")
        for side in order:
            port, pid, script = a if side == "a" else b
            extra = a_pids if side == "a" else b_pids
            runs[side].append(await wrk(env, port, pid, script, connections=connections,
                                        duration=env.args.duration, extra_pids=extra))
    ra, rb = median_run(runs["a"]), median_run(runs["b"])
    report(env, f"{title}", f"  (a) bare    {ra.line()}")
    report(env, f"{title}", f"  (b) sidecar {rb.line()}")
    report(env, f"{title}", f"  ratio (b)/(a) {rb.rps / ra.rps:.2f}   (rounds: "
           + ", ".join(f"{x.rps / y.rps:.2f}" for x, y in zip(runs["b"], runs["a"], strict=True))
           + f")   CPU ratio (a)/(b) {ra.cpu_us / rb.cpu_us:.2f}")
    return ra, rb


def report(env: Env, section: str, text: str) -> None:
    if not env.results or env.results[-1] != section:
        print(f"\n== {section}", flush=True)
        env.results.append(section)
    print(text, flush=True)


# --------------------------------------------------------------------------- fixtures


def escaped(issued: Issued) -> str:
    return quote(issued.cert_pem.decode(), safe="")


def xfcc(issued: Issued) -> str:
    """What Envoy sends with forward_client_cert_details + set_current_client_cert_details cert."""
    digest = hashlib.sha256(issued.der).hexdigest()
    return (f'By=spiffe://cluster.local/ns/api/sa/api;Hash={digest};Cert="{escaped(issued)}";'
            f'Subject="CN=client";URI=spiffe://cluster.local/ns/default/sa/client')


async def check_all(port: int, header: str, certs: list[str], tokens: list[tuple[int, str]],
                    concurrency: int = 16, extra: dict[str, str] | None = None) -> dict[int, int]:
    """Send every (token, cert) once; returns the count per status (the warm-up). 16 at once: one
    source (the bench's address) may hold idp.max_concurrent IdP calls, no more (admission)."""
    statuses: dict[int, int] = {}
    queue = list(tokens)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def worker() -> None:
            while queue:
                idx, token = queue.pop()
                async with session.get(f"http://127.0.0.1:{port}/check",
                                       headers={"Authorization": f"Bearer {token}", header: certs[idx],
                                                **(extra or {})}) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


async def metric(admin_port: int, name: str, labels: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{admin_port}/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(name + "{" + labels + "}") or line.startswith(name + "{" + labels + ","):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def mint(env: Env, n: int) -> list[tuple[int, str]]:
    """``n`` tokens, each bound to one of the four clients' certificates (client0 … client3)."""
    count = len(env.clients)
    return [(i % count, env.idp.mint_bound(f"client{i % count}", env.clients[i % count].x5t_s256)) for i in range(n)]


# --------------------------------------------------------------------------- scenarios


async def scenario_hit(env: Env, title: str, header: str, fmt: str, certs: list[str],
                       tokens: list[tuple[int, str]], decisions: str | None = None,
                       ca_file: Path | None = None) -> tuple[Run, Run, Server, Path]:
    bare = await start_bare(env.tmp, header)
    sidecar = await start_sidecar(env, header=header, fmt=fmt, decisions=decisions, ca_file=ca_file)
    try:
        warm = await check_all(sidecar.port, header, certs, tokens)
        if set(warm) != {200}:
            raise RuntimeError(f"warm-up answered {warm} (expected only 200)")
        script = lua_script(env, header, certs, tokens)
        ra, rb = await ab(env, title, (bare.port, bare.proc.pid, script), (sidecar.port, sidecar.proc.pid, script))
    except BaseException:
        sidecar.stop()  # the caller stops it on success; a failed scenario must not leave it running
        raise
    finally:
        bare.stop()
    return ra, rb, sidecar, script


async def profile(env: Env, sidecar: Server, script: Path, out: Path) -> None:
    """py-spy (pip install py-spy) samples the sidecar during one more cache-hit run; the collapsed
    stacks go to ``out`` (flamegraph.pl or speedscope read them)."""
    spy = await asyncio.create_subprocess_exec(
        str(Path(PY).parent / "py-spy"), "record", "-p", str(sidecar.proc.pid), "-o", str(out), "-f", "raw",
        "-r", "500", "-d", str(int(env.args.duration) + 2),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    await asyncio.sleep(1.0)
    run = await wrk(env, sidecar.port, sidecar.proc.pid, script, connections=50, duration=env.args.duration)
    await spy.wait()
    report(env, "profile", f"  py-spy on the sidecar during {run.line().strip()} -> {out}")


async def scenario_half_rate(env: Env, sidecar: Server, max_rps: float, tokens: list[tuple[int, str]],
                             certs: list[str]) -> tuple[Run, Run]:
    """wrk has no fixed-rate mode (wrk2 is not in Debian): each of C connections waits D ms after
    each answer (wrk's Lua ``delay()``), so the offered rate is about C*1000/(D+latency). The bare
    handler gets the same offered rate, as the reference for what the machine itself adds."""
    delay_ms = 10
    connections = max(1, round(max_rps / 2 * delay_ms / 1000))
    script = lua_script(env, "x-client-cert", certs, tokens, delay_ms=delay_ms)
    bare = await start_bare(env.tmp, "x-client-cert")
    runs: dict[str, list[Run]] = {"a": [], "b": []}
    try:
        for round_ in range(max(2, env.args.rounds // 2)):
            for side in (("a", "b") if round_ % 2 == 0 else ("b", "a")):
                server = bare if side == "a" else sidecar
                runs[side].append(await wrk(env, server.port, server.proc.pid, script, connections=connections,
                                            duration=max(env.args.duration, 2.0)))
    finally:
        bare.stop()
    ra, rb = median_run(runs["a"]), median_run(runs["b"])
    report(env, "p99 at half of the maximum rate (cache hit, escaped PEM)",
           f"  offered {max_rps / 2:.0f} req/s ({connections} connections x {delay_ms} ms think time)\n"
           f"  (a) bare    {ra.line()}\n  (b) sidecar {rb.line()}")
    return ra, rb


async def scenario_miss(env: Env, sidecar: Server, certs: list[str], hit_c1: Run) -> Run:
    """Every request carries a token never seen before (wrk rotates over more tokens than it sends),
    from four clients, each its own client and address (each its own admission source)."""
    n = env.args.miss_tokens
    tokens = mint(env, n)
    env.idp.delay = 0.005
    calls0, conns0 = env.idp.introspection_calls, env.idp.connections
    script = lua_script(env, "x-client-cert", certs, tokens, sources=True)
    run = await wrk(env, sidecar.port, sidecar.proc.pid, script, connections=50, duration=env.args.duration)
    calls, conns = env.idp.introspection_calls - calls0, env.idp.connections - conns0
    env.idp.delay = 0.0
    expected = 5.0 + hit_c1.p50_ms
    wrapped = " (the rotation wrapped: raise --miss-tokens)" if run.requests > n else ""
    report(env, "cache miss, IdP answers in 5 ms, 50 concurrent, every request a new token",
           f"  (b) sidecar {run.line()}\n"
           f"  IdP introspection calls {calls} for {run.requests} requests{wrapped}; new TLS connections "
           f"(handshakes) to the IdP during the run {conns}, since start {env.idp.connections}\n"
           f"  p50 / (5 ms + hit p50 at 1 connection {hit_c1.p50_ms:.2f} ms) = {run.p50_ms / expected:.2f}")
    return run


async def scenario_burst(env: Env, sidecar: Server, certs: list[str], title: str) -> int:
    """200 concurrent requests for one new token on 200 already-open connections."""
    (idx, token), = mint(env, 1)
    env.idp.delay = 0.005
    url = f"http://127.0.0.1:{sidecar.port}/check"
    assert sidecar.admin_port is not None
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200, force_close=False)) as s:
        async def one(headers: dict[str, str]) -> int:
            async with s.get(url, headers=headers) as r:
                await r.read()
                return r.status
        await asyncio.gather(*(one({}) for _ in range(200)))  # open 200 keep-alive connections
        await asyncio.sleep(0.5)  # requests of the previous scenario still queued at the server finish
        before = {k: await metric(sidecar.admin_port, "sidecar_cache_total", f'result="{k}"')
                  for k in ("hit", "miss", "coalesced")}
        calls0 = env.idp.introspection_calls
        statuses = await asyncio.gather(*(one({"Authorization": f"Bearer {token}", "x-client-cert": certs[idx]})
                                          for _ in range(200)))
    calls = env.idp.introspection_calls - calls0
    env.idp.delay = 0.0
    after = {k: await metric(sidecar.admin_port, "sidecar_cache_total", f'result="{k}"')
             for k in ("hit", "miss", "coalesced")}
    lookups = ", ".join(f"{k} {after[k] - before[k]:.0f}" for k in after)
    report(env, title, f"  IdP calls {calls}; statuses {sorted(set(statuses))}; lookups (worker 0): {lookups}")
    return calls


async def scenario_dpop(env: Env, certs: list[str], tokens: list[tuple[int, str]]) -> tuple[Run, Run]:
    """A DPoP-bound cache hit (RFC 9449: an ES256 proof verified and its jti remembered, per request)
    next to a certificate-bound one, on the same sidecar, in alternating rounds. Proofs are signed
    before each run (dpop.iat_window 3600 s keeps them fresh), one per request: wrk never resends one."""
    sidecar = await start_sidecar(env, extra="\n[dpop]\nenabled = true\niat_window = 3600\n"
                                             "replay_max_entries = 5000000\n"
                                             f'\n[routing]\norigins = ["{dpop.ORIGIN}"]\n')
    described = {"Host": dpop.HOST, "X-Forwarded-Proto": "https"}  # what nginx says: the declared origin
    clients = [dpop.Client() for _ in range(4)]
    bound = [(clients[i % 4], env.idp.mint_dpop("client", clients[i % 4].jkt)) for i in range(len(tokens))]
    title = "cache hit, DPoP-bound (ES256 proof per request) vs certificate-bound, same sidecar"
    try:
        warm = await check_all(sidecar.port, "x-client-cert", certs, tokens, extra=described)
        async with aiohttp.ClientSession() as session:
            for client, token in bound:
                async with session.get(f"http://127.0.0.1:{sidecar.port}/check",
                                       headers=dpop.headers(token, client.proof(token))) as r:
                    warm[r.status] = warm.get(r.status, 0) + 1
        if set(warm) != {200}:
            raise RuntimeError(f"warm-up answered {warm} (expected only 200)")
        cert_script = lua_script(env, "x-client-cert", certs, tokens, extra=described)
        runs: dict[str, list[Run]] = {"cert": [], "dpop": []}
        rate = 0.0
        for round_ in range(env.args.rounds):
            for side in (("cert", "dpop") if round_ % 2 == 0 else ("dpop", "cert")):
                if side == "cert":
                    script = cert_script
                else:  # enough proofs for the run at the certificate-bound rate, which DPoP cannot beat
                    count = int(max(rate, 5000.0) * env.args.duration * 1.5) + len(bound)
                    script = dpop.lua_script(env.tmp, bound, count)
                run = await wrk(env, sidecar.port, sidecar.proc.pid, script, connections=50,
                                duration=env.args.duration)
                runs[side].append(run)
                if side == "cert":
                    rate = max(rate, run.rps)
        rc, rd = median_run(runs["cert"]), median_run(runs["dpop"])
        report(env, title, f"  certificate-bound {rc.line()}")
        report(env, title, f"  DPoP-bound        {rd.line()}")
        report(env, title, f"  DPoP/certificate req/s {rd.rps / rc.rps:.2f}; CPU per request "
               f"+{rd.cpu_us - rc.cpu_us:.1f} µs (rounds: "
               + ", ".join(f"{d.rps / c.rps:.2f}" for d, c in zip(runs["dpop"], runs["cert"], strict=True)) + ")")
        return rc, rd
    finally:
        sidecar.stop()


NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  large_client_header_buffers 8 16k;
  upstream bare_auth {{ server 127.0.0.1:{bare}; keepalive 64; }}
  upstream sidecar_auth {{ server 127.0.0.1:{sidecar}; keepalive 64; }}
  upstream protected_api {{ server 127.0.0.1:{api}; keepalive 64; }}
  server {{ listen 127.0.0.1:{api}; root {tmp}/www; }}
{servers}
}}
"""
# location / is deploy/nginx/snippets/sidecar-protect.conf as deployed; /_sidecar_check is
# deploy/nginx/snippets/sidecar-check.conf except the certificate variable: wrk cannot present a
# client certificate, so the bench sends the escaped PEM itself and nginx forwards that header.
NGINX_SERVER = """
  server {{
    listen 127.0.0.1:{port};
    location = /_sidecar_check {{
      internal;
      proxy_pass http://{upstream};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Client-Cert $http_x_client_cert;
    }}
    location / {{
      include {snippets}/sidecar-protect.conf;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://protected_api;
    }}
  }}
"""


async def scenario_nginx(env: Env, sidecar: Server, certs: list[str], tokens: list[tuple[int, str]]) -> None:
    """nginx (one worker) in front of a static API, asking (a) the bare handler or (b) the sidecar."""
    nginx = nginx_binary()
    if nginx is None:
        report(env, "nginx auth_request", "  nginx not installed: skipped (./test.sh installs it)")
        return
    bare = await start_bare(env.tmp, "x-client-cert")
    ndir = env.tmp / "nginx"
    (ndir / "www").mkdir(parents=True, exist_ok=True)
    (ndir / "www" / "check").write_text("ok\n")
    ports = {"bare_auth": free_port(), "sidecar_auth": free_port()}
    snippets = ROOT / "deploy" / "nginx" / "snippets"
    servers = "".join(NGINX_SERVER.format(port=p, upstream=u, snippets=snippets) for u, p in ports.items())
    conf = ndir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=ndir, bare=bare.port, sidecar=sidecar.port, api=free_port(),
                                      servers=servers))
    proc = spawn([nginx, "-p", str(ndir), "-c", str(conf), "-e", str(ndir / "nginx-error.log")], SERVER_CORE,
                 env.tmp / "nginx.log")
    try:
        await wait_http(f"http://127.0.0.1:{ports['bare_auth']}/healthz", timeout=10)
        script = lua_script(env, "x-client-cert", certs, tokens)
        await ab(env, "nginx auth_request (server = nginx + auth service; plain HTTP into nginx)",
                 (ports["bare_auth"], proc.pid, script), (ports["sidecar_auth"], proc.pid, script),
                 a_pids=(bare.proc.pid,), b_pids=(sidecar.proc.pid,))
    finally:
        proc.terminate()
        proc.wait(10)
        bare.stop()


TRACEPARENT = "00-" + "5ab" * 10 + "5a-" + "c0de" * 4 + "-{flags}"


async def exported(receiver: Any, quiet: float = 0.5, bound: float = 30.0) -> None:
    """Wait until the receiver has had no span for ``quiet`` seconds (at most ``bound``)."""
    loop = asyncio.get_running_loop()
    deadline, last, since = loop.time() + bound, -1, loop.time()
    while loop.time() < deadline:
        count = receiver.received
        if count != last:
            last, since = count, loop.time()
        elif loop.time() - since >= quiet:
            return
        await asyncio.sleep(0.1)


async def scenario_tracing(env: Env, certs: list[str], tokens: list[tuple[int, str]]) -> dict[str, Run]:
    """The cost of tracing on a cache hit, in alternating rounds on one machine: bare aiohttp, the
    sidecar with tracing off (and, with ``--baseline DIR``, the sidecar of another tree, as it was
    before), and the sidecar with tracing on for checks whose caller does not sample them and for
    checks it does (a span each, exported over OTLP/gRPC to a receiver in this process, on the load
    core). Every side gets the same requests with a ``traceparent``: the unsampled one, except
    the sampled side."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # gRPC's notes on every fork of wrk while it serves
    from sidecar.dev.otlp import OtlpReceiver

    receiver = OtlpReceiver(max_spans=0).start()
    traced = f'\n[tracing]\nenabled = true\nendpoint = "{receiver.endpoint}"\n'
    bare = await start_bare(env.tmp, "x-client-cert")
    # One sidecar per side: a sampled run's spans are still being exported after it ends, which
    # must not be charged to another side's CPU.
    servers = {"off": await start_sidecar(env), "unsampled": await start_sidecar(env, extra=traced),
               "sampled": await start_sidecar(env, extra=traced)}
    if env.args.baseline:
        servers["baseline"] = await start_sidecar(env, tree=Path(env.args.baseline).resolve())
    unsampled = {"traceparent": TRACEPARENT.format(flags="00")}
    sampled = {"traceparent": TRACEPARENT.format(flags="01")}
    sides = {"bare": (bare, unsampled), "off": (servers["off"], unsampled),
             "unsampled": (servers["unsampled"], unsampled), "sampled": (servers["sampled"], sampled)}
    if "baseline" in servers:
        sides["baseline"] = (servers["baseline"], unsampled)
    runs: dict[str, list[Run]] = {side: [] for side in sides}
    try:
        for server in servers.values():
            # A few at a time: fair admission refuses one client's burst of new tokens beyond its share.
            warm = await check_all(server.port, "x-client-cert", certs, tokens, concurrency=4, extra=unsampled)
            if set(warm) != {200}:
                raise RuntimeError(f"warm-up answered {warm} (expected only 200)")
        scripts = {side: lua_script(env, "x-client-cert", certs, tokens, extra=headers)
                   for side, (_, headers) in sides.items()}
        order = list(sides)
        for round_ in range(env.args.rounds * 2):
            for side in order[round_ % len(order):] + order[:round_ % len(order)]:
                server, _ = sides[side]
                runs[side].append(await wrk(env, server.port, server.proc.pid, scripts[side], connections=50,
                                            duration=env.args.duration))
                if side == "sampled":
                    await exported(receiver)  # its spans leave before the next side runs on the same core
    finally:
        bare.stop()
        for server in servers.values():
            server.stop()
        receiver.stop()
    medians = {side: median_run(r) for side, r in runs.items()}
    base = medians["bare"]
    names = {"bare": "bare aiohttp", "baseline": f"sidecar at {env.args.baseline}", "off": "tracing off",
             "unsampled": "tracing on, not sampled", "sampled": "tracing on, sampled"}
    title = "cache hit, tracing (escaped PEM, a traceparent on every request)"
    for side, run in medians.items():
        report(env, title, f"  {names[side]:<26}{run.line()}   / bare {run.rps / base.rps:.2f}")
    off = medians["off"]
    extra = {side: medians[side].cpu_us - off.cpu_us for side in ("unsampled", "sampled")}
    report(env, title, f"  spans received / sampled requests {receiver.received / medians['sampled'].requests:.2f} "
           "(below 1: the SDK's queue dropped spans; its export after each run is not in its CPU)")
    report(env, title, f"  CPU per request over tracing off: not sampled {extra['unsampled']:+.1f} µs, "
           f"sampled {extra['sampled']:+.1f} µs; spans received {receiver.received}")
    if "baseline" in medians:
        report(env, title, f"  tracing off / {env.args.baseline}: req/s {off.rps / medians['baseline'].rps:.3f}, "
               f"CPU per request {off.cpu_us - medians['baseline'].cpu_us:+.1f} µs")
    return medians


async def scenario_memory(env: Env) -> None:
    n = env.args.memory_tokens
    proc = await asyncio.create_subprocess_exec(
        "taskset", "-c", SERVER_CORE, PY, str(ROOT / "bench" / "memory.py"), "--tokens", str(n),
        stdout=asyncio.subprocess.PIPE, cwd=ROOT)
    out, _ = await proc.communicate()
    data = json.loads(out)
    report(env, f"memory: RSS per cached token at {n} tokens",
           f"  {data['bytes_per_token']:.0f} bytes/token  (RSS {data['rss_before_mib']:.1f} MiB -> "
           f"{data['rss_after_mib']:.1f} MiB for {data['tokens']} tokens)")


async def scenario_workers(env: Env, certs: list[str], tokens: list[tuple[int, str]], script: Path) -> None:
    """1 vs 2 workers, both allowed on every core (as are wrk and the IdP): on 2 shared cores the
    load generator competes with the second worker, so this is a lower bound of the scaling."""
    every = ",".join(str(c) for c in CORES)
    servers = {w: await start_sidecar(env, workers=w, cores=every) for w in (1, 2)}
    try:
        for server in servers.values():
            await check_all(server.port, "x-client-cert", certs, tokens * 3)  # reuse_port spreads connections
        runs: dict[int, list[Run]] = {1: [], 2: []}
        for round_ in range(env.args.rounds):
            for w in ((1, 2) if round_ % 2 == 0 else (2, 1)):
                runs[w].append(await wrk(env, servers[w].port, servers[w].proc.pid, script, connections=50,
                                         duration=env.args.duration, threads=2, cores=every))
        r1, r2 = median_run(runs[1]), median_run(runs[2])
        report(env, "server.workers scaling (cache hit, escaped PEM; everything on all cores)",
               f"  workers=1 {r1.line()}\n  workers=2 {r2.line()}\n  scaling 2/1 {r2.rps / r1.rps:.2f}")
        await scenario_burst(env, servers[2], certs, "burst with workers=2: 200 concurrent, one new token")
    finally:
        for server in servers.values():
            server.stop()


ROUTES = 20


def routes_toml(count: int) -> str:
    """``count`` named policies and one rule each; the bench's path matches only the last rule."""
    text = ""
    for i in range(count):
        text += f'\n[policies.p{i}]\nrequired_scopes = []\n'
    for i in range(count):
        text += f'\n[[routes]]\npath = "/api/v1/r{i}"\nmethods = ["GET", "POST"]\npolicy = "p{i}"\n'
    return text


async def hits_ab(env: Env, certs: list[str], tokens: list[tuple[int, str]], extra: str,
                  original: dict[str, str] | None = None,
                  baseline: str = "") -> tuple[Run, Run, list[Run], list[Run], Server]:
    """Cache hits on a sidecar as configured by default, or with ``baseline`` (a), vs. one with
    ``extra`` configuration (b), the same requests; (b) is returned running (stop it). Three times
    the rounds, each shorter: the differences sought (~1 µs of 40) are far below the round-to-round
    spread of a shared machine, so more, shorter alternations."""
    single = await start_sidecar(env, extra=baseline)
    other = await start_sidecar(env, extra=extra)
    try:
        for server in (single, other):
            warm = await check_all(server.port, "x-client-cert", certs, tokens, extra=original)
            if set(warm) != {200}:
                raise RuntimeError(f"warm-up answered {warm} (expected only 200)")
        script = lua_script(env, "x-client-cert", certs, tokens, extra=original)
        runs: dict[str, list[Run]] = {"a": [], "b": []}
        for round_ in range(env.args.rounds * 3):
            for side in (("a", "b") if round_ % 2 == 0 else ("b", "a")):
                server = single if side == "a" else other
                runs[side].append(await wrk(env, server.port, server.proc.pid, script, connections=50,
                                            duration=max(1, round(env.args.duration / 1.5))))
    except BaseException:
        other.stop()
        raise
    finally:
        single.stop()
    return median_run(runs["a"]), median_run(runs["b"]), runs["a"], runs["b"], other


def ratio_line(ra: Run, rb: Run, a: list[Run], b: list[Run]) -> str:
    return (f"  ratio (b)/(a) {rb.rps / ra.rps:.3f}   (rounds: "
            + ", ".join(f"{x.rps / y.rps:.2f}" for x, y in zip(b, a, strict=True)) + ")"
            + f"   CPU ratio (a)/(b) {ra.cpu_us / rb.cpu_us:.3f}")


async def scenario_routes(env: Env, certs: list[str],
                          tokens: list[tuple[int, str]]) -> tuple[tuple[Run, Run], tuple[Run, Run]]:
    """Cache hit under one policy vs. under the last of 20 rules (20 named policies), then those 20
    rules vs. the same with ``routing.origins`` declared (issue 22), same requests: nginx-style
    ``X-Original-URI``/``X-Original-Method``, ``Host`` and ``X-Forwarded-Proto``. The rule match is
    memoized per (method, host, path), the target stage's verdicts per path and per host, and the
    token's verdict under the policy is kept on its cache entry. Returns ((a), (b)) and ((b), (c)),
    each pair from its own alternating rounds."""
    original = {"X-Original-URI": f"/api/v1/r{ROUTES - 1}/items?page=2", "X-Original-Method": "GET",
                "Host": dpop.HOST, "X-Forwarded-Proto": "https"}
    ra, rb, a, b, routed = await hits_ab(env, certs, tokens, routes_toml(ROUTES), original)
    routed.stop()
    with_origins = f'\n[routing]\norigins = ["{dpop.ORIGIN}"]\n' + routes_toml(ROUTES)
    rb2, rc, b2, c, declared = await hits_ab(env, certs, tokens, with_origins, original, baseline=routes_toml(ROUTES))
    try:
        assert declared.admin_port is not None
        allowed = await metric(declared.admin_port, "sidecar_decisions_total",
                               f'outcome="allow",policy="p{ROUTES - 1}",reason="ok"')
    finally:
        declared.stop()
    report(env, f"per-route policies: cache hit, one policy vs. {ROUTES} rules (escaped PEM, X-Original-URI)",
           f"  (a) single policy  {ra.line()}\n  (b) {ROUTES} rules     {rb.line()}\n" + ratio_line(ra, rb, a, b)
           + f"\n  (b) {ROUTES} rules     {rb2.line()}\n  (c) {ROUTES} rules, routing.origins declared {rc.line()}\n"
           f"  allowed under p{ROUTES - 1} (the last rule) with origins: {allowed:.0f}\n"
           + ratio_line(rb2, rc, b2, c).replace("(b)/(a)", "(c)/(b)").replace("(a)/(b)", "(b)/(c)"))
    return (ra, rb), (rb2, rc)


def issuers_toml(env: Env, names: tuple[str, ...] = ("b", "c")) -> str:
    """Two issuers besides [idp] (introspection at the bench IdP), every one accepted by [policy]."""
    text = f'\n[policy]\nissuers = {json.dumps(["default", *names])}\n'
    for name in names:
        text += (f'\n[issuers.{name}]\nintrospection_endpoint = "{env.idp.issuer}/introspect"\n'
                 f'token_format = "introspection"\nclient_id = "sidecar"\ncert_file = "{env.sidecar_files[0]}"\n'
                 f'key_file = "{env.sidecar_files[1]}"\nca_file = "{env.ca_file}"\ntimeout = 5.0\n')
    return text


async def scenario_issuers(env: Env, certs: list[str], tokens: list[tuple[int, str]]) -> tuple[Run, Run]:
    """Cache hit with one issuer ([idp]) vs. three (``[issuers.b]``, ``[issuers.c]``, and a policy
    naming all three), same requests: issuers are chosen on a miss only."""
    ra, rb, a, b, several = await hits_ab(env, certs, tokens, issuers_toml(env))
    several.stop()
    report(env, "several issuers: cache hit, one issuer vs. three (escaped PEM)",
           f"  (a) one issuer     {ra.line()}\n  (b) three issuers  {rb.line()}\n" + ratio_line(ra, rb, a, b))
    return ra, rb


def identity_toml(tmp: Path) -> str:
    """The default policy sends the identity token (docs/identity.md), signed with a new Ed25519 key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key_file = tmp / "identity.key"
    key_file.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return (f'\n[identity]\nkey_file = "{key_file}"\nissuer = "https://sidecar.example"\n'
            '\n[policy]\nidentity = true\nidentity_audience = "https://api.example"\n')


async def scenario_identity(env: Env, certs: list[str], tokens: list[tuple[int, str]]) -> tuple[Run, Run]:
    """Cache hit without and with the identity token, same requests: the token is signed once per
    cached entry (at the warm-up) and again only past half its life, so a hit signs nothing."""
    plain = await start_sidecar(env)
    signed = await start_sidecar(env, extra=identity_toml(env.tmp))
    try:
        for server in (plain, signed):
            warm = await check_all(server.port, "x-client-cert", certs, tokens)
            if set(warm) != {200}:
                raise RuntimeError(f"warm-up answered {warm} (expected only 200)")
        script = lua_script(env, "x-client-cert", certs, tokens)
        runs: dict[str, list[Run]] = {"a": [], "b": []}
        for round_ in range(env.args.rounds * 3):  # more, shorter alternations, as for the routes
            for side in (("a", "b") if round_ % 2 == 0 else ("b", "a")):
                server = plain if side == "a" else signed
                runs[side].append(await wrk(env, server.port, server.proc.pid, script, connections=50,
                                            duration=max(1, round(env.args.duration / 1.5))))
    finally:
        plain.stop()
        signed.stop()
    ra, rb = median_run(runs["a"]), median_run(runs["b"])
    report(env, "identity token: cache hit without vs. with it (escaped PEM)",
           f"  (a) without  {ra.line()}\n  (b) with     {rb.line()}\n"
           f"  ratio (b)/(a) {rb.rps / ra.rps:.3f}   (rounds: "
           + ", ".join(f"{x.rps / y.rps:.2f}" for x, y in zip(runs["b"], runs["a"], strict=True)) + ")"
           + f"   CPU ratio (a)/(b) {ra.cpu_us / rb.cpu_us:.3f}")
    return ra, rb


# --------------------------------------------------------------------------- main


async def main_async(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    os.sched_setaffinity(0, {int(LOAD_CORE)})  # the driver hosts the IdP: keep it off the server core
    ca = CertificateAuthority()
    ca_file = tmp / "ca.crt"
    ca_file.write_bytes(ca.root.cert_pem)
    idp_files = ca.issue("127.0.0.1", server_names=("127.0.0.1",)).write(tmp, "idp")
    sidecar_files = ca.issue("sidecar").write(tmp, "sidecar")
    clients = [ca.issue(f"client-{i}") for i in range(4)]
    idp, runner, idp_server = await start_idp(*idp_files, ca_file)
    env = Env(tmp, idp, ca, sidecar_files, ca_file, clients, args)
    load0 = os.getloadavg()
    print(f"sidecar bench  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  python {sys.version.split()[0]} "
          f"({sys.executable})  cores {CORES} (servers on {SERVER_CORE}, wrk+IdP on {LOAD_CORE})\n"
          f"tokens {args.tokens}, rounds {args.rounds} x {args.duration}s, wrk 50 connections, "
          f"decision log default: {LogConfig().decisions!r} (to a file), load average {load0[0]:.2f}", flush=True)
    pem = [escaped(c) for c in clients]
    tokens = mint(env, args.tokens)
    sidecars: list[Server] = []
    if args.routes_only or args.issuers_only or args.identity_only or args.dpop_only or args.tracing_only:
        try:
            if args.tracing_only:
                await scenario_tracing(env, pem, tokens)
            if args.routes_only:
                (ra, rb), (rb2, rc) = await scenario_routes(env, pem, tokens)
                print(f"\nratio (b)/(a) cache hit, {ROUTES} rules vs one policy: {rb.rps / ra.rps:.3f}")
                print(f"ratio (c)/(b) cache hit, {ROUTES} rules with routing.origins vs without: "
                      f"{rc.rps / rb2.rps:.3f} (CPU per request {rb2.cpu_us:.1f} -> {rc.cpu_us:.1f} µs)")
            if args.issuers_only:
                ia, ib = await scenario_issuers(env, pem, tokens)
                print(f"\nratio (b)/(a) cache hit, three issuers vs one: {ib.rps / ia.rps:.3f}")
            if args.identity_only:
                da, db = await scenario_identity(env, pem, tokens)
                print(f"\nratio (b)/(a) cache hit, with the identity token vs without: {db.rps / da.rps:.3f}")
            if args.dpop_only:
                dc, dd = await scenario_dpop(env, pem, tokens)
                print(f"\nratio DPoP-bound / certificate-bound cache hit req/s: {dd.rps / dc.rps:.2f}")
        finally:
            idp_server.close()
            await runner.cleanup()
            if not args.keep:
                shutil.rmtree(tmp, ignore_errors=True)
        return
    try:
        if args.peer_only:
            await scenario_peer(env, sys.modules[__name__])
            return
        ra, rb, sidecar, script = await scenario_hit(env, "cache hit, escaped PEM (nginx $ssl_client_escaped_cert)",
                                                     "x-client-cert", "auto", pem, tokens)
        sidecars.append(sidecar)
        xa, xb, sidecar_x, _ = await scenario_hit(env, "cache hit, XFCC (Envoy x-forwarded-client-cert)",
                                                  "x-forwarded-client-cert", "xfcc", [xfcc(c) for c in clients],
                                                  tokens)
        sidecar_x.stop()
        _, _, sidecar_d, _ = await scenario_hit(
            env, 'cache hit, escaped PEM, log.decisions = "deny" (no allow lines)', "x-client-cert", "auto", pem,
            tokens, decisions="deny")
        sidecar_d.stop()
        va, vb, sidecar_v, _ = await scenario_hit(
            env, "cache hit, escaped PEM, client_cert.ca_file (the chain validated)", "x-client-cert", "auto", pem,
            tokens, ca_file=env.ca_file)
        sidecar_v.stop()
        one = lua_script(env, "x-client-cert", pem, tokens)
        if args.profile:
            await profile(env, sidecar, script, Path(args.profile))
        hit_c1 = await wrk(env, sidecar.port, sidecar.proc.pid, one, connections=1, duration=1.0)
        half_bare, half = await scenario_half_rate(env, sidecar, rb.rps, tokens, pem)
        miss = await scenario_miss(env, sidecar, pem, hit_c1)
        await scenario_burst(env, sidecar, pem, "burst: 200 concurrent requests for one new token")
        await scenario_nginx(env, sidecar, pem, tokens)
        sidecar.stop()
        cert_bound, dpop_bound = await scenario_dpop(env, pem, tokens)
        (route_a, route_b), (route_b2, route_c) = await scenario_routes(env, pem, tokens)
        identity_a, identity_b = await scenario_identity(env, pem, tokens)
        issuer_a, issuer_b = await scenario_issuers(env, pem, tokens)
        await scenario_tracing(env, pem, tokens)
        await scenario_memory(env)
        peer = None if args.no_peer else await scenario_peer(env, sys.modules[__name__])
        if not args.no_workers:
            await scenario_workers(env, pem, tokens, script)
    finally:
        for s in sidecars:
            s.stop()
        idp_server.close()
        await runner.cleanup()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    load1 = os.getloadavg()
    print("\n== targets (ratios within this run)")
    if peer is not None:
        print(f"  nginx + sidecar / Apache + mod_auth_openidc req/s at {args.peer_clients} clients: "
              f"{peer.rps_ratio:.2f} (target >= 1.5)\n"
              f"  CPU authorization adds per request, sidecar / mod_auth_openidc: {peer.ours_adds_us:.1f} / "
              f"{peer.peer_adds_us:.1f} µs = {peer.cpu_ratio:.2f} (target <= 1.5)\n"
              f"  nginx + sidecar + edge cache / Apache + mod_auth_openidc req/s at {args.peer_clients} clients: "
              f"{peer.edge_rps_ratio:.2f} (target >= 3)\n"
              f"  CPU authorization adds per request, sidecar + edge cache / mod_auth_openidc: "
              f"{peer.edge_adds_us:.1f} / {peer.peer_adds_us:.1f} µs = {peer.edge_cpu_ratio:.2f} (target <= 0.5)")
    print(f"  cache hit / bare aiohttp req/s: {rb.rps / ra.rps:.2f} (target >= 0.85)\n"
          f"  sidecar CPU per new token: {miss.cpu_us:.0f} µs (target <= 200)\n"
          f"  p99 at half the maximum rate: {half.p99_ms:.2f} ms, bare {half_bare.p99_ms:.2f} ms (target <= 2)\n"
          f"  DPoP-bound hit / certificate-bound hit req/s: {dpop_bound.rps / cert_bound.rps:.2f} "
          f"(+{dpop_bound.cpu_us - cert_bound.cpu_us:.0f} µs CPU per request) (target >= 0.5)")
    if peer is not None:
        print(f"  a new token, one at a time, nginx + sidecar: {peer.new_token_ms:.2f} ms vs the peer's "
              f"{peer.peer_new_token_ms:.2f} ms = {peer.peer_new_token_ms / max(peer.new_token_ms, 0.01):.1f}x "
              "faster (target >= 2.5)")
    print(f"\nload average {load0[0]:.2f} -> {load1[0]:.2f} on {os.cpu_count()} cores "
          "(other processes share the cores: compare ratios within this run)")
    print(f"ratio (b)/(a) cache hit, {ROUTES} rules vs one policy: {route_b.rps / route_a.rps:.3f}; "
          f"(c)/(b) with routing.origins declared vs without: {route_c.rps / route_b2.rps:.3f}")
    print(f"ratio (b)/(a) cache hit, three issuers vs one: {issuer_b.rps / issuer_a.rps:.3f}")
    print(f"ratio (b)/(a) cache hit, with the identity token vs without: {identity_b.rps / identity_a.rps:.3f}")
    print(f"ratio (b)/(a) cache hit, escaped PEM: {rb.rps / ra.rps:.2f}  (XFCC {xb.rps / xa.rps:.2f}, "
          f"with client_cert.ca_file {vb.rps / va.rps:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 1 s, small N")
    parser.add_argument("--tokens", type=int, help="cached tokens the hit scenarios rotate over (1000)")
    parser.add_argument("--miss-tokens", type=int, help="unique new tokens in the miss scenario (20000)")
    parser.add_argument("--memory-tokens", type=int, help="tokens for the RSS figure (100000)")
    parser.add_argument("--rounds", type=int, help="A/B rounds per scenario (4)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (3)")
    parser.add_argument("--no-workers", action="store_true", help="skip the 1 -> 2 workers scaling")
    parser.add_argument("--routes-only", action="store_true",
                        help=f"only one policy vs. {ROUTES} rules, without and with routing.origins (issues 13, 22)")
    parser.add_argument("--tracing-only", action="store_true",
                        help="only the cost of tracing on a cache hit (off, not sampled, sampled)")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also run the sidecar of another source tree beside tracing off (a before/after)")
    parser.add_argument("--issuers-only", action="store_true", help="only one issuer vs. three (issue 24)")
    parser.add_argument("--identity-only", action="store_true",
                        help="only a cache hit without vs. with the identity token (issue 27)")
    parser.add_argument("--dpop-only", action="store_true", help="only the DPoP-bound vs certificate-bound hit")
    parser.add_argument("--no-peer", action="store_true", help="skip Apache + mod_auth_openidc against nginx + sidecar")
    parser.add_argument("--peer-only", action="store_true", help="run only the peer comparison")
    parser.add_argument("--peer-clients", type=int, default=50, help="ab -c for the peer comparison (50)")
    parser.add_argument("--peer-keepalive", type=int, nargs="*", default=[], metavar="N",
                        help="also measure nginx + sidecar with upstream keepalive N (the template's setting)")
    parser.add_argument("--peer-new-tokens", type=int,
                        help="new tokens per peer front, one at a time (80: under admission.miss_burst)")
    parser.add_argument("--profile", metavar="FILE", help="py-spy collapsed stacks of a cache-hit run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    args = parser.parse_args()
    quick = args.quick
    args.tokens = args.tokens or (50 if quick else 1000)
    args.miss_tokens = args.miss_tokens or (3000 if quick else 20000)
    args.memory_tokens = args.memory_tokens or (5000 if quick else 100_000)
    args.peer_new_tokens = args.peer_new_tokens or (20 if quick else 80)
    args.rounds = args.rounds or (1 if quick else 4)
    args.duration = args.duration or (1.0 if quick else 3.0)
    args.wrk = ensure_wrk()
    import uvloop

    uvloop.run(main_async(args))


if __name__ == "__main__":
    main()
