"""The real Envoy with the shipped deploy/envoy files where faults must be injected: the fake IdP
(sidecar/dev/fakeidp.py, real mutual TLS) answers 500, drops the connection or answers too late, the
sidecar hangs; and the shared scenario table (tests/support/scenarios.py) through Envoy for real.

Also what Envoy itself sends to the HTTP ext_authz service, recorded in the sidecar's place, so
the model the other Envoy tests build requests from (tests/support/envoy_side.py) is checked against the
binary.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import pytest

from sidecar.dev.fakeidp import Fault
from tests.interop.envoy import MODES, Envoy, EnvoyFront, ThreadedFakeIdp
from tests.interop.https import Reply, request, tls_context
from tests.interop.stack import EchoUpstream, Received
from tests.support import envoy_side
from tests.support.pki_fixtures import TestPki
from tests.support.scenarios import CASES, Case

pytestmark = [pytest.mark.interop, pytest.mark.fronts]

# The API's identifier: ThreadedFakeIdp.mint's tokens say aud "api".
DEPLOYMENT = {"SIDECAR_POLICY__AUDIENCES": "api"}
# Cases that need no sidecar settings of their own and a certificate Envoy accepts (Envoy refuses
# the handshake without one, and cannot be made to forward an unreadable one).
THROUGH_ENVOY = [c for c in CASES if not c.sections and c.cert in ("alice", "bob")]
# Where the real Envoy differs from the model in tests/support/envoy_side.py: its HTTP ext_authz client
# joins two Authorization lines into one value ("Bearer a,Bearer b"), which the sidecar reads as
# malformed rather than duplicated. Same status, same challenge: still invalid_request.
REAL_REASON = {("http", "token_duplicated"): "token_malformed"}


@pytest.fixture(scope="module")
def fake_idp(pki: TestPki) -> Iterator[ThreadedFakeIdp]:
    idp = ThreadedFakeIdp(pki)
    yield idp
    idp.close()


@pytest.fixture(scope="module", params=list(MODES))
def front(request: pytest.FixtureRequest, fake_idp: ThreadedFakeIdp, pki: TestPki,
          client_files: dict[str, tuple[Path, Path]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvoyFront]:
    log_dir = tmp_path_factory.mktemp(f"envoy-faults-{request.param}")
    started = EnvoyFront(request.param, fake_idp.issuer, pki, log_dir, DEPLOYMENT, client_files).start()
    yield started
    started.stop()


@pytest.fixture
def idp(fake_idp: ThreadedFakeIdp) -> Iterator[ThreadedFakeIdp]:
    """The module's fake IdP, its fault cleared after each test."""
    yield fake_idp
    fake_idp.idp.fault = None


def _expired_but_active(idp: ThreadedFakeIdp) -> str:
    """An IdP whose clock is behind ours: it still calls the token active, past its exp."""
    token = idp.mint("alice")
    idp.idp.fault = Fault(body=json.dumps({**idp.idp.tokens[token], "exp": int(time.time()) - 3600}).encode())
    return token


def _with_token_type(idp: ThreadedFakeIdp, token_type: str) -> str:
    token = idp.mint("alice")
    idp.idp.tokens[token]["token_type"] = token_type
    return token


def authorization(case: Case, idp: ThreadedFakeIdp) -> list[str]:
    tokens: dict[str, Callable[[], list[str]]] = {
        "expired": lambda: [f"Bearer {_expired_but_active(idp)}"],
        "future": lambda: [f"Bearer {idp.mint('alice', nbf=int(time.time()) + 3600)}"],
        "mac": lambda: [f"Bearer {_with_token_type(idp, 'mac')}"],
        "bound": lambda: [f"Bearer {idp.mint('alice', scope='read write')}"],
        "unbound": lambda: [f"Bearer {idp.mint('carol')}"],
        "unknown": lambda: ["Bearer not-a-real-token"],
        "none": lambda: [],
        "malformed": lambda: ["Bearer a b"],
        "duplicated": lambda: [f"Bearer {idp.mint('alice')}", "Bearer other"],
    }
    return tokens[case.token]()


def send(front: EnvoyFront, values: list[str], cert: str) -> Reply:
    """One request through Envoy with each Authorization value as a header line of its own."""
    connection = http.client.HTTPSConnection("127.0.0.1", front.envoy.port, timeout=10,
                                             context=tls_context(front.pki.ca_file, front.client_files[cert]))
    try:
        connection.putrequest("GET", "/orders/42")
        for value in values:
            connection.putheader("Authorization", value)
        connection.endheaders()
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


@pytest.mark.parametrize("case", THROUGH_ENVOY, ids=[c.name for c in THROUGH_ENVOY])
def test_the_scenario_table_through_the_real_envoy(front: EnvoyFront, idp: ThreadedFakeIdp, case: Case) -> None:
    idp.idp.fault = case.fault
    assert case.cert is not None
    reached = len(front.upstream.received)
    reason = REAL_REASON.get((front.mode, str(case.reason)), str(case.reason))
    before = front.sidecar.decisions(reason)
    reply = send(front, authorization(case, idp), case.cert)
    assert reply.status == case.status, front.diagnostics()
    if case.status == 200:
        assert front.upstream.last.header("x-credential-client-id") in ("alice", "carol")
        assert front.upstream.last.header("authorization") is None
        return
    assert len(front.upstream.received) == reached
    assert front.sidecar.decisions(reason) == before + 1
    if case.status in (401, 403):
        challenge = reply.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="api"')
        assert (f'error="{case.error}"' in challenge) if case.error else ("error=" not in challenge)
    if case.status >= 500 and front.mode == "http":
        # Any 5xx from an HTTP service is an error to Envoy, not a denial: it answers
        # status_on_error (503) itself, without the sidecar's Retry-After or body.
        assert "retry-after" not in reply.headers and reply.body == b""
    elif case.status >= 500:
        # gRPC: the sidecar's denied_response (503) reaches the client whole.
        assert int(reply.headers["retry-after"]) > 0
        assert reply.json() == {"error": "temporarily_unavailable", "reason": "idp_unavailable"}


def test_an_idp_slower_than_idp_timeout_is_503_from_the_sidecar_before_envoys_own_timeout(
    front: EnvoyFront, idp: ThreadedFakeIdp
) -> None:
    idp.idp.fault = Fault(delay=2.5)  # above idp.timeout (1.5 s) and the ext_authz timeout (2 s)
    unavailable = front.sidecar.decisions("idp_unavailable")
    started = time.monotonic()
    reply = front.call(idp.mint("alice"), "alice")
    elapsed = time.monotonic() - started
    assert reply.status == 503, front.diagnostics()
    assert 1.4 < elapsed < 2.0, elapsed  # the sidecar's deadline, not Envoy's 2 s
    assert front.sidecar.decisions("idp_unavailable") == unavailable + 1
    idp.idp.fault = None
    assert front.call(idp.mint("alice"), "alice").status == 200


def test_a_hung_sidecar_is_503_at_envoys_ext_authz_timeout_and_never_lets_a_request_through(
    front: EnvoyFront, idp: ThreadedFakeIdp
) -> None:
    token = idp.mint("alice")
    reached = len(front.upstream.received)
    front.sidecar.pause()
    try:
        started = time.monotonic()
        reply = front.call(token, "alice")
        elapsed = time.monotonic() - started
    finally:
        front.sidecar.resume()
    assert reply.status == 503, front.diagnostics()  # failure_mode_allow: false, status_on_error
    assert 1.9 < elapsed < 4.0, elapsed  # the shipped ext_authz timeout: 2 s
    assert len(front.upstream.received) == reached
    assert front.call(token, "alice").status == 200, front.diagnostics()


class CheckRecorder:
    """In the sidecar's place for envoy-http.yaml: records each check request and denies it; its
    second port answers Envoy's health check (/readyz) with 200."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.server is not recorder.admin:
                    recorder.received.append(Received(self.command, self.path, list(self.headers.items())))
                status = 200 if self.server is recorder.admin else 403
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.check = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.admin = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        for server in (self.check, self.admin):
            server.daemon_threads = True
            Thread(target=server.serve_forever, daemon=True).start()

    def port(self, server: ThreadingHTTPServer) -> int:
        return int(server.server_address[1])

    def close(self) -> None:
        for server in (self.check, self.admin):
            server.shutdown()
            server.server_close()


def test_envoy_sends_the_http_check_the_way_tests_envoy_side_models_it(
    pki: TestPki, client_files: dict[str, tuple[Path, Path]]
) -> None:
    recorder, upstream = CheckRecorder(), EchoUpstream()
    envoy = Envoy("envoy-http.yaml", pki, upstream=upstream.port, check=recorder.port(recorder.check),
                  admin=recorder.port(recorder.admin))
    try:
        envoy.start()
        forged_xfcc = envoy_side.xfcc_element(pki.bob)
        reply = request(f"{envoy.url}/orders/42?page=2&q=a%2Fb", ca_file=pki.ca_file, cert=client_files["alice"],
                        method="POST", headers={"Authorization": "Bearer abc", "X-Forwarded-Client-Cert": forged_xfcc,
                                                "X-Credential-Tenant": "forged", "X-Other": "kept",
                                                "X-Forwarded-For": "203.0.113.66"})
        assert reply.status == 403, envoy.logs()
        (seen,) = recorder.received
        assert (seen.method, seen.path) == ("POST", "/ext_authz/orders/42?page=2&q=a%2Fb")
        assert seen.header("authorization") == "Bearer abc"
        assert seen.header("content-length") == "0"
        # SANITIZE_SET with cert: true: Hash= and Cert= of the verified certificate, the client's dropped.
        xfcc = seen.header("x-forwarded-client-cert")
        assert xfcc in (envoy_side.xfcc_element(pki.alice), envoy_side.xfcc_element(pki.alice, legacy=True)), xfcc
        # use_remote_address: Envoy appends the address it saw; that last element is what the
        # sidecar charges new tokens to (admission.source_header), whatever the client wrote before.
        # (For a loopback peer Envoy appends its own local address instead of 127.0.0.1.)
        written, added = (seen.header("x-forwarded-for") or "").split(",")
        assert written == "203.0.113.66" and added and added != written
        # allowed_headers: nothing else of the client's request goes to the service.
        assert seen.header("x-other") is None and seen.header("x-credential-tenant") is None
        assert upstream.received == []
    finally:
        envoy.stop()
        recorder.close()
        upstream.close()
