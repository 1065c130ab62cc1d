"""``[[routes]]`` rules that read the host and the path, through the real fronts as shipped, with
no ``routing.origins`` declared (it is optional): the sidecar must read the host and the target
the way the upstream will, or refuse them (issue 22, cases 2 and 3).

The rules: ``admin.test`` and ``/admin`` fall under the strict default policy, everything else
under ``open`` (binding off), so carol's unbound token passes only where a rule lets it. A client
that gets the sidecar to read ``open`` while the upstream receives ``admin.test`` or ``/admin``
has escaped its rule:

- a host with a final dot and a port (``admin.test.:8443``), or an empty port (``admin.test:``):
  Envoy, Traefik and HAProxy pass either on as it is, and a server that matches names the way
  nginx does (``$host``: lower case, no final dot, no port) serves it as ``admin.test``;
- a comma in ``Host``: HAProxy's ``req.hdr`` reads the last element of a comma list, the upstream
  receives the whole value;
- a raw ``#`` in the target (a request target carries no fragment): Envoy, Traefik and HAProxy
  refuse it themselves, Caddy sends it on as ``%23`` to the sidecar and the upstream alike (Go
  re-encodes the path), so both read ``/orders%23/../admin/users`` as ``/admin/users``. nginx is
  the front that cuts the path there (tests/interop/test_routes_nginx.py).

The host cases passed every front before the sidecar refused hosts that servers read differently
(sidecar/core/target.py's ``plain_host``); the comma list passed HAProxy until sidecar.lua sent the
whole ``Host`` (``req.fhdr``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.interop.envoy import ENVOY_DIR, MODES, EnvoyFront
from tests.interop.front_doors import DEPLOY, start_front_stack
from tests.interop.https import Reply, raw_request
from tests.interop.oidc_idp import JWT_RESOURCE, OPAQUE_RESOURCE, OidcProvider
from tests.interop.stack import EchoUpstream
from tests.support.pki_fixtures import TestPki

pytestmark = [pytest.mark.interop, pytest.mark.fronts, pytest.mark.routes]

RULES = f"""
[policies.open]
binding = "off"
audiences = ["{OPAQUE_RESOURCE}", "{JWT_RESOURCE}"]

[[routes]]
hosts = ["admin.test"]
policy = "default"

[[routes]]
path = "/admin"
policy = "default"

[[routes]]
path = "/"
policy = "open"
"""
FRONTS = ("envoy-grpc", "envoy-http", "traefik", "haproxy", "caddy")


@dataclass
class Front:
    """A front as shipped, its sidecar on the front's shipped file with RULES and no origins."""

    name: str
    url: str
    host: str
    port: int
    upstream: EchoUpstream
    sidecar: Any
    ca_file: Path
    cert: tuple[Path, Path]
    stop: Any

    def send(self, target: bytes, token: str, hosts: list[str]) -> Reply:
        return raw_request(self.url, target, ca_file=self.ca_file, cert=self.cert,
                           headers=[*(("Host", h) for h in hosts), ("Authorization", f"Bearer {token}")])

    def diagnostics(self) -> str:
        return str(self.sidecar.logs())[-4000:]


def sidecar_file(shipped: Path, state: Path) -> Path:
    text = shipped.read_text()
    assert 'origins = ["https://api.example.com"]' in text, shipped
    config = state / shipped.name
    config.write_text(text.replace('origins = ["https://api.example.com"]', "") + RULES)
    return config


@pytest.fixture(scope="module", params=FRONTS)
def front(request: pytest.FixtureRequest, oidc: OidcProvider, pki: TestPki,
          client_files: dict[str, tuple[Path, Path]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    name, state = request.param, tmp_path_factory.mktemp(request.param)
    audiences = {"SIDECAR_POLICY__AUDIENCES": f"{OPAQUE_RESOURCE},{JWT_RESOURCE}"}
    if name.startswith("envoy"):
        mode = name.removeprefix("envoy-")
        envoy = EnvoyFront(mode, oidc.issuer, pki, state, audiences, client_files)
        envoy.sidecar.config_file = sidecar_file(ENVOY_DIR / MODES[mode][1], state)
        del envoy.sidecar.env["SIDECAR_ROUTING__ORIGINS"]
        envoy.start()
        port = int(envoy.envoy.url.rsplit(":", 1)[1])
        yield Front(name, envoy.envoy.url, "127.0.0.1", port, envoy.upstream, envoy.sidecar, pki.ca_file,
                    client_files["alice"], envoy.stop)
        envoy.stop()
        return
    stack = start_front_stack(name, oidc, state, client_files=client_files, overrides=audiences,
                              config=sidecar_file(DEPLOY / name / "sidecar.toml", state))
    stack.sidecar.stop()  # the harness declared the front's origin to know it is up: none here
    del stack.sidecar.env["SIDECAR_ROUTING__ORIGINS"]
    stack.sidecar.start()
    yield Front(name, stack.front.url, stack.front.host, stack.front.port, stack.upstream, stack.sidecar,
                oidc.pki.ca_file, client_files["alice"], stack.stop)
    stack.stop()


@pytest.fixture(scope="module")
def carol(oidc: OidcProvider) -> str:
    return oidc.access_token("carol", scope="read")  # client_secret_basic: not bound


def test_the_rules_hold_through_the_front(front: Front, carol: str) -> None:
    """The baseline the cases below stand on: the open rule passes, both strict ones refuse."""
    own = f"{front.host}:{front.port}"
    assert front.send(b"/orders/42", carol, [own]).status == 200, front.diagnostics()
    assert front.send(b"/admin/users", carol, [own]).status == 401, front.diagnostics()
    if front.name != "caddy":  # Caddy answers 421 to a Host its certificate does not name
        assert front.send(b"/orders/42", carol, [f"admin.test:{front.port}"]).status == 401, front.diagnostics()


@pytest.mark.parametrize("host", ["ADMIN.test.:{port}", "admin.test:", "admin.test.", "admin.test:{port}, {own}"])
def test_a_host_rule_is_not_escaped_by_a_final_dot_an_empty_port_or_a_comma_list(
        front: Front, carol: str, host: str) -> None:
    reached = len(front.upstream.received)
    reply = front.send(b"/orders/42", carol, [host.format(port=front.port, own=f"{front.host}:{front.port}")])
    assert reply.status in (400, 401, 421), (reply.status, reply.body, front.diagnostics())
    assert len(front.upstream.received) == reached, front.upstream.last.header("host")


def test_a_fragment_in_the_target_never_reaches_the_upstream_under_the_rule_of_its_first_part(
        front: Front, carol: str) -> None:
    reached = len(front.upstream.received)
    reply = front.send(b"/orders#/../admin/users", carol, [f"{front.host}:{front.port}"])
    assert reply.status in (400, 401), (reply.status, reply.body, front.diagnostics())
    assert len(front.upstream.received) == reached, front.upstream.last.path


def test_an_absolute_form_request_for_the_ruled_host_is_judged_as_that_host(front: Front, carol: str) -> None:
    """``GET https://admin.test:<port>/orders/42`` with ``Host: <the front's own>``: the upstream
    receives admin.test (Envoy, Traefik) or the front refuses the mismatch (HAProxy 400, Caddy 421);
    the sidecar must read admin.test too (nginx: tests/interop/test_origins.py)."""
    reached = len(front.upstream.received)
    reply = front.send(f"https://admin.test:{front.port}/orders/42".encode(), carol, [f"{front.host}:{front.port}"])
    assert reply.status in (400, 401, 421), (reply.status, reply.body, front.diagnostics())
    assert len(front.upstream.received) == reached, front.upstream.last.header("host")
