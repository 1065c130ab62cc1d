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
