"""The peer in the benchmark: Apache httpd + mod_auth_openidc, the OAuth 2.0 resource
server a user would run instead, against nginx + the sidecar as shipped in ``deploy/nginx``.
A library module of bench/run.py, which runs it (``bench/run.py --peer-only``: only this).

Five fronts, each terminating TLS with a client certificate and proxying to the same static
backend (a separate nginx process), driven by ``ab -k -E`` (keep-alive, client certificate
presented; wrk cannot present one):

- **apache+oidc**: ``AuthType oauth20``, introspection over mutual TLS at the same IdP
  (``OIDCOAuthIntrospectionEndpointCert``/``Key``, server certificate verified), the ``shm``
  introspection cache, a scope check (``Require claim``), claims passed upstream as headers.
  ``MaxKeepAliveRequests 1000`` (nginx's default; Apache's own 100 would re-handshake TLS
  every 100 requests): its strongest shipped settings.
- **apache**: the same virtual host without authorization (the control).
- **nginx+sidecar**: ``deploy/nginx/api.conf.template`` and its snippets as shipped, filled in
  with ``envsubst``'s names, and the sidecar with ``deploy/nginx/sidecar.toml`` (only the
  addresses, files and the API's audience changed).
- **nginx**: the same server block without ``include snippets/sidecar-protect.conf`` (control).
- **nginx+sidecar+edge**: ``deploy/nginx/api-edge-cache.conf.template`` (the decision cache at
  the edge, on tmpfs) in an nginx process of its own, and a sidecar of its own with
  ``deploy/nginx/sidecar-edge-cache.toml`` (``response.edge_ttl = 1``).

Fronts, the sidecar and the backend run on the server core, ab and the IdP on the load core.
Rounds rotate the order of the fronts. What authorization adds per request is a front's CPU per
request minus its control's. A new token is measured one at a time over one keep-alive
connection (the latency a client sees, and the CPU the front and its authorizer spend); fewer
than the sidecar's ``admission.miss_burst`` (100 new tokens per client, or per client address), beyond which
the sidecar answers 429 and nginx's auth_request turns that into 500.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import ssl
import statistics
import subprocess
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from sidecar.dev.devidp import Client

PACKAGES = ("apache2", "libapache2-mod-auth-openidc", "apache2-utils")
APACHE = Path("/usr/sbin/apache2")
MODULES = Path("/usr/lib/apache2/modules")
NGINX_MODULES = Path("/usr/lib/nginx/modules")
DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "nginx"


def ensure_peer() -> None:
    """Install Apache, mod_auth_openidc and ab with apt when one is missing."""
    if APACHE.exists() and (MODULES / "mod_auth_openidc.so").exists() and shutil.which("ab"):
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *PACKAGES], check=True, env=env,
                   stdout=subprocess.DEVNULL)


# --------------------------------------------------------------------------- configurations

BACKEND_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {d}/backend.pid;
error_log {d}/backend-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  keepalive_requests 100000;
  server {{ listen 127.0.0.1:{port}; root {d}/www; }}
}}
"""

APACHE_CONF = """
ServerRoot "{d}"
DefaultRuntimeDir "{d}/run"
PidFile "{d}/run/apache2.pid"
Mutex file:{d}/run default
ErrorLog "{d}/error.log"
LogLevel warn
{user}
ServerName 127.0.0.1
LoadModule mpm_event_module {m}/mod_mpm_event.so
LoadModule authn_core_module {m}/mod_authn_core.so
LoadModule authz_core_module {m}/mod_authz_core.so
LoadModule setenvif_module {m}/mod_setenvif.so
LoadModule socache_shmcb_module {m}/mod_socache_shmcb.so
LoadModule ssl_module {m}/mod_ssl.so
LoadModule proxy_module {m}/mod_proxy.so
LoadModule proxy_http_module {m}/mod_proxy_http.so
LoadModule auth_openidc_module {m}/mod_auth_openidc.so
KeepAlive On
MaxKeepAliveRequests 1000
KeepAliveTimeout 5
SSLRandomSeed startup builtin
SSLSessionCache shmcb:{d}/run/ssl_scache(512000)
Listen 127.0.0.1:{auth_port}
Listen 127.0.0.1:{plain_port}
OIDCCABundlePath {ca}
OIDCCacheType shm
OIDCCacheShmMax {cache_entries}
OIDCCacheShmEntrySizeMax 8721
OIDCOAuthIntrospectionEndpoint {issuer}/introspect
OIDCOAuthClientID apache
OIDCOAuthIntrospectionEndpointAuth none
OIDCOAuthIntrospectionEndpointCert {d}/apache-client.crt
OIDCOAuthIntrospectionEndpointKey {d}/apache-client.key
OIDCOAuthSSLValidateServer On
OIDCPassClaimsAs headers
<VirtualHost 127.0.0.1:{auth_port}>
  SSLEngine on
  SSLCertificateFile {d}/front.crt
  SSLCertificateKeyFile {d}/front.key
  SSLVerifyClient optional_no_ca
  ProxyPass /api http://127.0.0.1:{backend}/api
  <Location /api>
    AuthType oauth20
    Require claim "scope~^(.* )?read( .*)?$"
  </Location>
</VirtualHost>
<VirtualHost 127.0.0.1:{plain_port}>
  SSLEngine on
  SSLCertificateFile {d}/front.crt
  SSLCertificateKeyFile {d}/front.key
  SSLVerifyClient optional_no_ca
  ProxyPass /api http://127.0.0.1:{backend}/api
</VirtualHost>
"""

NGINX_CONF = """
load_module {modules}/ngx_http_headers_more_filter_module.so;
load_module {modules}/ndk_http_module.so;
load_module {modules}/ngx_http_set_misc_module.so;
daemon off;
master_process off;
worker_processes 1;
pid {d}/{name}.pid;
error_log {d}/{name}-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
{servers}
}}
"""


def fill(template: str, values: dict[str, str]) -> str:
    """envsubst with a list of names: only ``${NAME}`` of the listed names is replaced."""
    for name, value in values.items():
        template = template.replace("${" + name + "}", value)
    return template


def control_server(api_conf: str) -> str:
    """The template's server block without its upstreams and without the sidecar's protection."""
    server = api_conf[api_conf.index("\nserver {"):]
    return server.replace("include snippets/sidecar-protect.conf;", "")


def keepalive_variant(api_conf: str, port: int, keepalive: int) -> str:
    """The template's server block on ``port`` with its own copy of the sidecar upstream holding
    ``keepalive`` idle connections (a measurement of the template's setting, not a deployment)."""
    upstream = re.search(r"upstream sidecar_check \{.*?\n\}", api_conf, re.DOTALL)
    assert upstream is not None, "api.conf.template has no upstream sidecar_check"
    name = f"sidecar_check_{port}"
    block = re.sub(r"keepalive \d+;", f"keepalive {keepalive};", upstream.group(0)).replace("sidecar_check", name)
    server = re.sub(r"listen \S+ ssl;", f"listen 127.0.0.1:{port} ssl;", api_conf[api_conf.index("\nserver {"):])
    # the snippet's location proxies to sidecar_check: a copy of it naming this variant's upstream
    check = (DEPLOY / "snippets" / "sidecar-check.conf").read_text().replace("http://sidecar_check", f"http://{name}")
    server = server.replace("include snippets/sidecar-check.conf;", check)
    return block + "\n" + server


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


def shipped_sidecar_toml(changes: dict[str, dict[str, Any]], name: str = "sidecar.toml") -> str:
    """``deploy/nginx/<name>`` with ``changes`` applied (addresses, files, audiences)."""
    config = tomllib.loads((DEPLOY / name).read_text())
    for section, values in changes.items():
        config.setdefault(section, {}).update(values)
    return "".join(f"[{section}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()) + "\n"
                   for section, values in config.items())


# --------------------------------------------------------------------------- ab


@dataclass
class AbRun:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    requests: int
    bad: int
    detail: str = ""

    def line(self) -> str:
        bad = f"  NON-2XX/ERRORS {self.bad} {self.detail}" if self.bad else ""
        return (f"{self.rps:9.0f} req/s  p50 {self.p50_ms:5.1f} ms  p99 {self.p99_ms:5.1f} ms  "
                f"{self.cpu_us:6.1f} µs CPU/req{bad}")


def parse_ab(out: str, cpu_s: float) -> AbRun:
    def number(pattern: str, default: float | None = None) -> float:
        found = re.search(pattern, out, re.MULTILINE)
        if found is None:
            if default is not None:
                return default
            raise RuntimeError(f"ab output without {pattern!r}:\n{out}")
        return float(found.group(1))

    done = int(number(r"^Complete requests:\s+(\d+)"))
    bad = int(number(r"^Non-2xx responses:\s+(\d+)", 0))
    # ab's "Length" failures are answers longer or shorter than the first one (a run cut off by
    # -t): only refused connections, receive errors, exceptions and non-2xx answers count as bad.
    detail = re.search(r"^\s+\(Connect: (\d+), Receive: (\d+), Length: \d+, Exceptions: (\d+)\)$", out, re.MULTILINE)
    if detail is not None:
        bad = sum(int(x) for x in detail.groups()) + int(number(r"^Non-2xx responses:\s+(\d+)", 0))
    return AbRun(number(r"^Requests per second:\s+([\d.]+)"), number(r"^\s+50%\s+(\d+)"),
                 number(r"^\s+99%\s+(\d+)"), cpu_s * 1e6 / max(done, 1), done, bad,
                 detail.group(0).strip() if detail else "")


def median(runs: list[AbRun]) -> AbRun:
    return AbRun(statistics.median(r.rps for r in runs), statistics.median(r.p50_ms for r in runs),
                 statistics.median(r.p99_ms for r in runs), statistics.median(r.cpu_us for r in runs),
                 sum(r.requests for r in runs), sum(r.bad for r in runs), " ".join(r.detail for r in runs if r.bad))


# --------------------------------------------------------------------------- the scenario


@dataclass
class Front:
    name: str
    port: int
    pids: tuple[int, ...]
    path: str = "/api"


class PeerBench:
    """Starts the four fronts and the backend in ``tmp/peer`` and measures them."""

    def __init__(self, env: Any, run: Any) -> None:
        self.env = env
        self.run = run  # bench.run: spawn, free_port, cpu_seconds, report, start_sidecar helpers
        self.dir = env.tmp / "peer"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.fronts: dict[str, Front] = {}
        self.client_pem = self.dir / "client.pem"
        self.edge_cache: Path | None = None  # on tmpfs: removed by stop()

    # ---- start

    async def start(self) -> None:
        r, env = self.run, self.env
        d = self.dir
        for sub in ("www", "run", "body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "www" / "api").write_text("ok\n")
        env.ca.issue("127.0.0.1", server_names=("127.0.0.1",)).write(d, "front")
        env.ca.issue("apache").write(d, "apache-client")  # Apache's client certificate at the IdP
        env.idp.add_client(Client("apache", may_introspect=True))
        client = env.clients[0]
        self.client_pem.write_bytes(client.cert_pem + client.key_pem)
        self.token = env.idp.mint_bound("client", client.x5t_s256)

        backend = r.free_port()
        (d / "backend.conf").write_text(BACKEND_CONF.format(d=d, port=backend))
        nginx = r.nginx_binary()
        self.procs.append(r.spawn([nginx, "-p", str(d), "-c", str(d / "backend.conf"), "-e",
                                   str(d / "backend-error.log")], r.SERVER_CORE, d / "backend.log"))

        # Apache + mod_auth_openidc
        auth_port, plain_port = r.free_port(), r.free_port()
        user = ""
        if os.geteuid() == 0:  # Apache refuses to run its workers as root
            user = "User www-data\nGroup www-data"
        (d / "apache.conf").write_text(APACHE_CONF.format(
            d=d, m=MODULES, user=user, auth_port=auth_port, plain_port=plain_port, backend=backend,
            ca=env.ca_file, issuer=env.idp.issuer, cache_entries=max(1000, env.args.peer_new_tokens * 8 + 100)))
        if os.geteuid() == 0:
            shutil.chown(d, "www-data")
            for path in (d / "run", d / "apache-client.key", d / "apache-client.crt"):
                shutil.chown(path, "www-data", "www-data")
            env.ca_file.chmod(0o644)
            env.tmp.chmod(0o755)
        apache = r.spawn([str(APACHE), "-f", str(d / "apache.conf"), "-DFOREGROUND"], r.SERVER_CORE,
                         d / "apache.log")
        self.procs.append(apache)

        # nginx + sidecar, deploy/nginx as shipped
        sidecar_port, api_port, control_port = r.free_port(), r.free_port(), r.free_port()
        (d / "snippets").symlink_to(DEPLOY / "snippets")
        addresses = {"TLS_CERT": str(d / "front.crt"), "TLS_KEY": str(d / "front.key"),
                     "UPSTREAM_ADDR": f"127.0.0.1:{backend}"}
        api = fill((DEPLOY / "api.conf.template").read_text(), {
            **addresses, "API_LISTEN": f"127.0.0.1:{api_port}", "SIDECAR_ADDR": f"127.0.0.1:{sidecar_port}"})
        control = control_server(api).replace(f"127.0.0.1:{api_port} ssl", f"127.0.0.1:{control_port} ssl")
        variants = {k: r.free_port() for k in self.env.args.peer_keepalive}
        (d / "nginx.conf").write_text(NGINX_CONF.format(
            modules=NGINX_MODULES, d=d, name="nginx",
            servers="\n".join([api, control, *(keepalive_variant(api, port, k) for k, port in variants.items())])))
        sidecar = await self.start_sidecar("sidecar.toml", sidecar_port)
        front = r.spawn([nginx, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "nginx-error.log")],
                        r.SERVER_CORE, d / "nginx.log")
        self.procs.append(front)

        # nginx + sidecar + the decision cache at the edge: a process of its own (its upstream has
        # the shipped name), the cache on tmpfs as the template asks
        edge_sidecar_port, edge_port = r.free_port(), r.free_port()
        shm = Path("/dev/shm")
        self.edge_cache = Path(tempfile.mkdtemp(prefix="sidecar-bench-edge-", dir=shm if shm.is_dir() else d))
        self.edge_cache.chmod(0o755)
        edge = fill((DEPLOY / "api-edge-cache.conf.template").read_text(), {
            **addresses, "API_LISTEN": f"127.0.0.1:{edge_port}", "SIDECAR_ADDR": f"127.0.0.1:{edge_sidecar_port}",
            "EDGE_CACHE_DIR": str(self.edge_cache / "cache"),
            "EDGE_CACHE_SECRET": base64.b64encode(os.urandom(32)).decode()})
        (d / "edge.conf").write_text(NGINX_CONF.format(modules=NGINX_MODULES, d=d, name="edge", servers=edge))
        edge_sidecar = await self.start_sidecar("sidecar-edge-cache.toml", edge_sidecar_port)
        edge_front = r.spawn([nginx, "-p", str(d), "-c", str(d / "edge.conf"), "-e", str(d / "edge-error.log")],
                             r.SERVER_CORE, d / "edge.log")
        self.procs.append(edge_front)

        self.fronts = {
            "apache+oidc": Front("Apache + mod_auth_openidc", auth_port, (apache.pid,)),
            "apache": Front("Apache alone (no auth)", plain_port, (apache.pid,)),
            "nginx+sidecar": Front("nginx + sidecar (deploy/nginx as shipped)", api_port, (front.pid, sidecar.pid)),
            "nginx+sidecar+edge": Front("nginx + sidecar + edge cache (api-edge-cache)", edge_port,
                                        (edge_front.pid, edge_sidecar.pid)),
            "nginx": Front("nginx alone (no auth)", control_port, (front.pid,)),
        }
        for k, port in variants.items():
            self.fronts[f"keepalive {k}"] = Front(f"  the same, upstream keepalive {k}", port, (front.pid, sidecar.pid))
        for key, f in self.fronts.items():
            status = await self.wait_https(f.port, self.token)
            if status != 200:
                raise RuntimeError(f"{key} answered {status} to a valid token (see {d})")
        for key in ("apache+oidc", "nginx+sidecar", "nginx+sidecar+edge"):
            status = await self.get(self.fronts[key].port, "not-a-token")
            if status != 401:
                raise RuntimeError(f"{key} answered {status} to an unknown token (expected 401)")

    async def start_sidecar(self, name: str, port: int) -> subprocess.Popen[bytes]:
        """The sidecar on ``deploy/nginx/<name>``, with this bench's addresses, files and audience."""
        r, env, d = self.run, self.env, self.dir
        admin = r.free_admin_ports(1)
        files = env.sidecar_files
        config = d / f"sidecar-{port}.toml"
        config.write_text(shipped_sidecar_toml({
            "server": {"port": port, "admin_port": admin},
            "idp": {"issuer": env.idp.issuer, "cert_file": str(files[0]), "key_file": str(files[1]),
                    "ca_file": str(env.ca_file)},
            "policy": {"audiences": ["api"]},
        }, name))
        sidecar = r.spawn([r.PY, "-m", "sidecar", "serve", "--config", str(config)], r.SERVER_CORE,
                          d / f"sidecar-{port}.log")
        self.procs.append(sidecar)
        await r.wait_http(f"http://127.0.0.1:{admin}/readyz")
        return sidecar

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.env.ca_file))
        context.load_cert_chain(self.client_pem)
        return context

    async def get(self, port: int, token: str) -> int:
        async with aiohttp.ClientSession() as s, s.get(
                f"https://127.0.0.1:{port}/api", headers={"Authorization": f"Bearer {token}"},
                ssl=self.ssl_context()) as response:
            await response.read()
            return response.status

    async def wait_https(self, port: int, token: str, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await self.get(port, token)
            except (aiohttp.ClientError, OSError):
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                    raise RuntimeError(f"a front did not come up (logs in {self.dir})") from None
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.edge_cache is not None:
            shutil.rmtree(self.edge_cache, ignore_errors=True)

    # ---- measure

    async def ab(self, front: Front, connections: int, duration: float) -> AbRun:
        cpu0 = sum(self.run.cpu_seconds(p) for p in front.pids)
        proc = await asyncio.create_subprocess_exec(
            "taskset", "-c", self.run.LOAD_CORE, "ab", "-k", "-q", "-t", f"{duration:g}", "-n", "10000000",
            "-c", str(connections), "-s", "10", "-E", str(self.client_pem),
            "-H", f"Authorization: Bearer {self.token}", f"https://127.0.0.1:{front.port}{front.path}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        cpu = sum(self.run.cpu_seconds(p) for p in front.pids) - cpu0
        return parse_ab(out.decode(errors="replace"), cpu)

    async def throughput(self, connections: int) -> dict[str, AbRun]:
        keys = list(self.fronts)
        runs: dict[str, list[AbRun]] = {k: [] for k in keys}
        for round_ in range(self.env.args.rounds):
            shift = round_ % len(keys)
            for key in keys[shift:] + keys[:shift]:  # each front goes first once every 4 rounds
                runs[key].append(await self.ab(self.fronts[key], connections, self.env.args.duration))
        return {k: median(v) for k, v in runs.items()}

    async def new_tokens(self, key: str, count: int) -> tuple[float, float, float]:
        """``count`` requests, each with a token never seen, one at a time on one keep-alive TLS
        connection: (median ms, p90 ms, front CPU µs per request)."""
        front = self.fronts[key]
        tokens = [self.env.idp.mint_bound("client", self.env.clients[0].x5t_s256) for _ in range(count)]
        times: list[float] = []
        connector = aiohttp.TCPConnector(limit=1, ssl=self.ssl_context())
        async with aiohttp.ClientSession(connector=connector) as s:
            async with s.get(f"https://127.0.0.1:{front.port}{front.path}",
                             headers={"Authorization": f"Bearer {self.token}"}) as warm:
                await warm.read()
            cpu0 = sum(self.run.cpu_seconds(p) for p in front.pids)
            for token in tokens:
                start = time.perf_counter()
                async with s.get(f"https://127.0.0.1:{front.port}{front.path}",
                                 headers={"Authorization": f"Bearer {token}"}) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{key} answered {response.status} to a new token")
                times.append((time.perf_counter() - start) * 1000)
            cpu = sum(self.run.cpu_seconds(p) for p in front.pids) - cpu0
        times.sort()
        return statistics.median(times), times[int(len(times) * 0.9)], cpu * 1e6 / count


@dataclass
class PeerFigures:
    rps_ratio: float  # nginx + sidecar / Apache + mod_auth_openidc
    ours_adds_us: float  # CPU per request the sidecar's authorization adds to nginx alone
    peer_adds_us: float  # CPU per request mod_auth_openidc adds to Apache alone
    edge_rps_ratio: float  # nginx + sidecar + edge cache / Apache + mod_auth_openidc
    edge_adds_us: float  # CPU per request the sidecar behind the edge cache adds to nginx alone
    new_token_ms: float = 0.0  # a new token, one at a time, through nginx + sidecar: median latency
    peer_new_token_ms: float = 0.0  # the same through Apache + mod_auth_openidc

    @property
    def cpu_ratio(self) -> float:
        return self.ours_adds_us / max(self.peer_adds_us, 0.1)

    @property
    def edge_cpu_ratio(self) -> float:
        return self.edge_adds_us / max(self.peer_adds_us, 0.1)


async def scenario_peer(env: Any, run: Any) -> PeerFigures:
    """Apache + mod_auth_openidc against nginx + sidecar as shipped, with and without the decision
    cache at the edge, each with its control."""
    nginx = run.nginx_binary()
    needed = ("ngx_http_headers_more_filter_module.so", "ndk_http_module.so", "ngx_http_set_misc_module.so")
    if nginx is None or not all((NGINX_MODULES / name).exists() for name in needed):
        raise RuntimeError("nginx with the headers-more and set-misc modules is needed (./test.sh installs them)")
    ensure_peer()
    bench = PeerBench(env, run)
    title = ("the peer: Apache + mod_auth_openidc vs nginx + sidecar as shipped "
             f"(TLS with client certificate, ab -k, {env.args.peer_clients} clients, one token)")
    try:
        await bench.start()
        med = await bench.throughput(env.args.peer_clients)
        for key, front in bench.fronts.items():
            run.report(env, title, f"  {front.name:46} {med[key].line()}")
        ours, edge, peer = med["nginx+sidecar"], med["nginx+sidecar+edge"], med["apache+oidc"]
        alone = med["nginx"].cpu_us
        figures = PeerFigures(ours.rps / peer.rps, ours.cpu_us - alone, peer.cpu_us - med["apache"].cpu_us,
                              edge.rps / peer.rps, edge.cpu_us - alone)
        run.report(env, title,
                   f"  req/s nginx + sidecar / Apache + mod_auth_openidc: {figures.rps_ratio:.2f} (target >= 1.5)\n"
                   f"  CPU authorization adds per request: sidecar {figures.ours_adds_us:.1f} µs, mod_auth_openidc "
                   f"{figures.peer_adds_us:.1f} µs; ratio {figures.cpu_ratio:.2f} (target <= 1.5)\n"
                   f"  req/s nginx + sidecar + edge cache / Apache + mod_auth_openidc: {figures.edge_rps_ratio:.2f} "
                   f"(target >= 3)\n"
                   f"  CPU authorization adds per request: sidecar + edge cache {figures.edge_adds_us:.1f} µs, "
                   f"mod_auth_openidc {figures.peer_adds_us:.1f} µs; ratio {figures.edge_cpu_ratio:.2f} "
                   "(target <= 0.5)")
        count = env.args.peer_new_tokens
        sub = f"the peer: a new token, one request at a time ({count} tokens, IdP over mutual TLS)"
        for key in ("apache+oidc", "nginx+sidecar"):
            p50, p90, cpu = await bench.new_tokens(key, count)
            if key == "apache+oidc":
                figures.peer_new_token_ms = p50
            else:
                figures.new_token_ms = p50
            run.report(env, sub, f"  {bench.fronts[key].name:46} p50 {p50:6.2f} ms  p90 {p90:6.2f} ms  "
                                 f"{cpu:7.1f} µs CPU/request (front + authorizer)")
    finally:
        bench.stop()
    return figures
