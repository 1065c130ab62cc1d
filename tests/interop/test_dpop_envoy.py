"""DPoP-bound tokens from the real IdP through the real Envoy (shipped deploy/envoy files), HTTP and
gRPC ext_authz: what each mode tells the sidecar about the original request is enough to check a
proof's ``htm`` and ``htu`` (HTTP: the check's method, ``Host``, ``x-forwarded-proto`` and the path
minus ``routing.path_prefix``; gRPC: ``attributes.request.http``).

The shipped listeners require a client certificate: dave's TLS connection presents bob's, which
his DPoP-bound token does not care about.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.envoy import MODES, EnvoyFront
from tests.interop.oidc_idp import JWT_RESOURCE, OPAQUE_RESOURCE, OidcProvider
from tests.support.dpop_proof import DpopKey
from tests.support.pki_fixtures import TestPki

pytestmark = [pytest.mark.interop, pytest.mark.dpop]

PATH = "/orders/42"


@pytest.fixture(scope="module", params=list(MODES))
def front(request: pytest.FixtureRequest, oidc: OidcProvider, pki: TestPki,
          client_files: dict[str, tuple[Path, Path]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvoyFront]:
    overrides = {"SIDECAR_POLICY__AUDIENCES": f"{OPAQUE_RESOURCE},{JWT_RESOURCE}", "SIDECAR_DPOP__ENABLED": "true"}
    started = EnvoyFront(request.param, oidc.issuer, pki, tmp_path_factory.mktemp(f"dpop-envoy-{request.param}"),
                         overrides, client_files).start()
    yield started
    started.stop()


def dpop_call(front: EnvoyFront, token: str, proof: str, *, method: str = "GET", path: str = PATH) -> int:
    return front.call(None, "bob", method=method, path=path,
                      headers={"Authorization": f"DPoP {token}", "DPoP": proof}).status


@pytest.mark.parametrize("resource", [OPAQUE_RESOURCE, JWT_RESOURCE])
def test_a_dpop_bound_token_with_fresh_proofs_passes_envoy_and_the_proof_stays_behind(
    front: EnvoyFront, oidc: OidcProvider, resource: str
) -> None:
    dave = DpopKey()
    token = oidc.access_token("dave", dpop=dave, resource=resource)
    url = front.envoy.url + PATH
    for method in ("GET", "POST"):
        assert dpop_call(front, token, dave.proof(method, url, token), method=method, path=PATH + "?page=2") == 200, \
            front.diagnostics()
        seen = front.upstream.last
        assert (seen.method, seen.path) == (method, PATH + "?page=2")
        assert seen.header("x-credential-client-id") == "dave"
        assert seen.header("x-credential-cnf-jkt") == dave.jkt
        assert seen.header("x-credential-cnf-method") == "dpop"
        assert seen.header("dpop") is None and seen.header("authorization") is None


def test_a_proof_for_another_uri_method_or_a_replayed_one_is_refused_with_the_dpop_challenge(
    front: EnvoyFront, oidc: OidcProvider
) -> None:
    dave = DpopKey()
    token = oidc.access_token("dave", dpop=dave)
    url = front.envoy.url + PATH
    reached = len(front.upstream.received)
    for reason, proof, method in [("dpop_htu_mismatch", dave.proof("GET", url + "/other", token), "GET"),
                                  ("dpop_htu_mismatch", dave.proof("GET", "http" + url[5:], token), "GET"),
                                  ("dpop_htm_mismatch", dave.proof("GET", url, token), "DELETE")]:
        before = front.sidecar.decisions(reason)
        reply = front.call(None, "bob", method=method, path=PATH,
                           headers={"Authorization": f"DPoP {token}", "DPoP": proof})
        assert reply.status == 401, (reason, front.diagnostics())
        assert 'DPoP realm="api", error="invalid_dpop_proof"' in reply.headers["www-authenticate"]
        assert front.sidecar.decisions(reason) == before + 1
    proof = dave.proof("GET", url, token)
    assert dpop_call(front, token, proof) == 200
    assert dpop_call(front, token, proof) == 401
    assert len(front.upstream.received) == reached + 1


def test_a_proof_captured_at_another_server_is_refused_whatever_authority_the_client_sends(
    front: EnvoyFront, oidc: OidcProvider
) -> None:
    """The shipped routes take any :authority (domains: ["*"]) and the check used to build htu from
    it: a proof for https://other.example:<port>/orders/42 passed with that :authority. The origin is
    routing.origins now: the host is refused before any IdP call (issue 22, case 1)."""
    dave = DpopKey()
    token = oidc.access_token("dave", dpop=dave)
    other = f"other.example:{front.envoy.port}"
    reached, before = len(front.upstream.received), front.sidecar.decisions("origin_not_allowed")
    calls = front.sidecar.metric("sidecar_idp_requests_total")
    reply = front.call(None, "bob", path=PATH, headers={"Host": other, "Authorization": f"DPoP {token}",
                                                        "DPoP": dave.proof("GET", f"https://{other}{PATH}", token)})
    assert reply.status == 403 and b'"origin_not_allowed"' in reply.body, (reply.status, front.diagnostics())
    assert front.sidecar.decisions("origin_not_allowed") == before + 1
    assert front.sidecar.metric("sidecar_idp_requests_total") == calls and len(front.upstream.received) == reached


@pytest.fixture(scope="module", params=list(MODES))
def nonce_front(request: pytest.FixtureRequest, oidc: OidcProvider, pki: TestPki,
                client_files: dict[str, tuple[Path, Path]],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvoyFront]:
    overrides = {"SIDECAR_POLICY__AUDIENCES": f"{OPAQUE_RESOURCE},{JWT_RESOURCE}", "SIDECAR_DPOP__ENABLED": "true",
                 "SIDECAR_DPOP__NONCE": "required"}
    started = EnvoyFront(request.param, oidc.issuer, pki, tmp_path_factory.mktemp(f"nonce-envoy-{request.param}"),
                         overrides, client_files).start()
    yield started
    started.stop()


def test_envoy_hands_the_dpop_nonce_to_the_client_on_401_and_on_200_never_upstream(
    nonce_front: EnvoyFront, oidc: OidcProvider
) -> None:
    """RFC 9449 §9 with dpop.nonce = "required": HTTP ext_authz passes dpop-nonce to the client
    (allowed_client_headers, allowed_client_headers_on_success in deploy/envoy/envoy-http.yaml), gRPC
    in denied_response and ok_response.response_headers_to_add."""
    dave = DpopKey()
    token = oidc.access_token("dave", dpop=dave)
    url = nonce_front.envoy.url + PATH
    first = nonce_front.call(None, "bob", path=PATH, headers={"Authorization": f"DPoP {token}",
                                                              "DPoP": dave.proof("GET", url, token)})
    assert first.status == 401, (first.status, first.body, nonce_front.diagnostics())
    assert 'DPoP realm="api", error="use_dpop_nonce"' in first.headers["www-authenticate"]
    nonce = first.headers["dpop-nonce"]
    second = nonce_front.call(None, "bob", path=PATH, headers={"Authorization": f"DPoP {token}",
                                                               "DPoP": dave.proof("GET", url, token, nonce=nonce)})
    assert second.status == 200, (second.status, second.body, nonce_front.diagnostics())
    assert second.headers["dpop-nonce"]  # the one to use next (the same within a quarter of its lifetime)
    seen = nonce_front.upstream.last
    assert seen.header("x-credential-cnf-jkt") == dave.jkt and seen.header("dpop-nonce") is None
    altered = nonce[:-1] + ("B" if nonce[-1] != "B" else "C")
    forged = nonce_front.call(None, "bob", path=PATH, headers={
        "Authorization": f"DPoP {token}", "DPoP": dave.proof("GET", url, token, nonce=altered)})
    assert forged.status == 401 and forged.headers["dpop-nonce"] == second.headers["dpop-nonce"]
    assert nonce_front.sidecar.decisions("dpop_nonce_invalid") >= 1
