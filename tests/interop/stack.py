"""One deployment as the README describes it: nginx (deploy/nginx templates) in front of an
upstream that echoes what it received, the sidecar process (``python -m sidecar --config
deploy/nginx/sidecar.toml``, overridden by SIDECAR_* variables) deciding, the real IdP behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.interop.https import Reply, request
from tests.interop.nginx import DEPLOY, Nginx
from tests.interop.oidc_idp import JWT_RESOURCE, OPAQUE_RESOURCE, OidcProvider
from tests.interop.processes import stop, tail, wait_until
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric_sum(text: str, name: str, labels: Mapping[str, str]) -> float:
    """The sum of the samples of ``name`` in a Prometheus page whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        found, _, label_text = sample.partition("{")
        if found == name and labels.items() <= dict(_LABEL.findall(label_text)).items():
            total += float(value)
    return total


@dataclass
class Received:
    method: str
    path: str
    headers: list[tuple[str, str]]

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def header(self, name: str) -> str | None:
        found = self.values(name)
        assert len(found) <= 1, f"{name} received {len(found)} times: {found}"
        return found[0] if found else None


class EchoUpstream:
    """The protected API: records every request and echoes its headers back as JSON; with ``check``,
    answers the status it gives for the request (an upstream that verifies something itself)."""

    def __init__(self, check: Callable[[Received], int] | None = None) -> None:
        self.received: list[Received] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                seen = Received(self.command, self.path, list(self.headers.items()))
                upstream.received.append(seen)
                body = json.dumps({"method": seen.method, "path": seen.path, "headers": seen.headers}).encode()
                self.send_response(200 if check is None else check(seen))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def last(self) -> Received:
        return self.received[-1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SidecarProcess:
    """The sidecar as deployed: its CLI, the example config file, environment overrides."""

    def __init__(self, idp: OidcProvider, log_dir: Path, overrides: Mapping[str, str],
                 config: Path = DEPLOY / "sidecar.toml") -> None:
        self.port, self.admin_port = free_port(), free_port()
        self.config = config
        pki = idp.pki
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
        self.env.update({
            "SIDECAR_SERVER__PORT": str(self.port), "SIDECAR_SERVER__ADMIN_PORT": str(self.admin_port),
            "SIDECAR_IDP__ISSUER": idp.issuer, "SIDECAR_IDP__CA_FILE": str(pki.ca_file),
            "SIDECAR_IDP__CERT_FILE": str(pki.sidecar_files[0]), "SIDECAR_IDP__KEY_FILE": str(pki.sidecar_files[1]),
            # The API's identifiers at the test IdP, as a deployment fills in policy.audiences.
            "SIDECAR_POLICY__AUDIENCES": f"{OPAQUE_RESOURCE},{JWT_RESOURCE}",
            **overrides,
        })
        self.log = log_dir / f"sidecar-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "--config", str(self.config)],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        # Ready means discovery from the issuer succeeded.
        wait_until(lambda: self.admin("/readyz").status == 200, what="sidecar", process=self.process,
                   log=self.log)

    def admin(self, path: str) -> Reply:
        return request(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5)

    def check(self, headers: Mapping[str, str]) -> Reply:
        """A check straight to the sidecar, as nginx's subrequest would make it."""
        return request(f"http://127.0.0.1:{self.port}/_sidecar_check", headers=dict(headers), timeout=10)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
        return metric_sum(self.admin("/metrics").body.decode(), name, labels)

    def logs(self) -> str:
        return tail(self.log, 200)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None


@dataclass
class Stack:
    idp: OidcProvider
    sidecar: SidecarProcess
    nginx: Nginx
    upstream: EchoUpstream
    client_files: Mapping[str, tuple[Path, Path]] = field(default_factory=dict)

    def call(self, token: str | None = None, cert: str | None = None, *, path: str = "/orders/42",
             method: str = "GET", headers: Mapping[str, str] | None = None,
             repeated: list[tuple[str, str]] | None = None, source: str | None = None) -> Reply:
        """A client request through nginx: TLS with ``cert``'s certificate (or none), from ``source``."""
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        return request(self.nginx.url + path, ca_file=self.idp.pki.ca_file, method=method, headers=sent,
                       cert=self.client_files[cert] if cert else None, repeated=repeated, source=source)

    def diagnostics(self) -> str:
        return (f"--- sidecar\n{self.sidecar.logs()}\n--- nginx\n{self.nginx.error_log()}\n"
                f"--- oidc-provider\n{tail(self.idp.log)}")

    def stop(self) -> None:
        self.nginx.stop()
        self.sidecar.stop()
        self.upstream.close()


def start_stack(idp: OidcProvider, log_dir: Path, *, template: str = "api.conf.template",
                overrides: Mapping[str, str] | None = None,
                client_files: Mapping[str, tuple[Path, Path]] | None = None,
                config: Path = DEPLOY / "sidecar.toml", upstream: EchoUpstream | None = None,
                values: Mapping[str, str] | None = None) -> Stack:
    """``values``: the template's own placeholders beyond the addresses and files every one has."""
    upstream = upstream or EchoUpstream()
    sidecar = SidecarProcess(idp, log_dir, overrides or {}, config)
    pki = idp.pki
    nginx = Nginx(template, {
        "TLS_CERT": str(pki.idp_files[0]), "TLS_KEY": str(pki.idp_files[1]), "CLIENT_CA": str(pki.ca_file),
        "SIDECAR_ADDR": f"127.0.0.1:{sidecar.port}", "UPSTREAM_ADDR": f"127.0.0.1:{upstream.port}", **(values or {}),
    })
    stack = Stack(idp, sidecar, nginx, upstream, client_files or {})
    try:
        sidecar.start()
        nginx.start()
    except BaseException:
        stack.stop()
        raise
    return stack
