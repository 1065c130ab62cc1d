"""DPoP-bound tokens (RFC 9449) from the real IdP, through real nginx, beside certificate-bound ones.

dave asks oidc-provider 8.8.1 (``features.dPoP``) for tokens with a real proof at its token
endpoint, so the IdP binds them to his key (``cnf.jkt``, ``token_type: DPoP``): opaque ones, which
the sidecar introspects, and ``at+jwt`` ones, which it validates locally. Each request to the API
then carries a fresh proof for nginx's URL; nginx's check subrequest (deploy/nginx snippets) tells
the sidecar the original method, URI, host and scheme. The hostile proofs each get a 401 with the
``DPoP`` challenge and their own reason, never a 5xx.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.interop.conftest import StartStack
from tests.interop.oidc_idp import JWT_RESOURCE, OPAQUE_RESOURCE, OidcProvider
from tests.interop.stack import Stack
from tests.support.dpop_proof import DpopKey, ath_of, hmac_signed, unsigned
from tests.support.pki_fixtures import TestPki

pytestmark = [pytest.mark.interop, pytest.mark.dpop]

PATH = "/orders/42"
DPOP = {"SIDECAR_DPOP__ENABLED": "true", "SIDECAR_DPOP__MAX_PROOF_SIZE": "2048"}


@pytest.fixture
def stack(stacks: StartStack) -> Stack:
    return stacks(**DPOP)


@pytest.fixture(scope="module")
def dave() -> DpopKey:
    return DpopKey("ES256")


def call(stack: Stack, token: str, proof: str | None, *, method: str = "GET", path: str = PATH,
         scheme: str = "DPoP", repeated: list[tuple[str, str]] | None = None) -> int:
    headers = {"Authorization": f"{scheme} {token}"}
    if proof is not None:
        headers["DPoP"] = proof
    return stack.call(None, method=method, path=path, headers=headers, repeated=repeated).status


def denials(stack: Stack, reason: str) -> float:
    return stack.sidecar.metric("sidecar_decisions_total", outcome="deny", reason=reason)


def test_the_real_idp_binds_daves_tokens_to_his_key(oidc: OidcProvider, dave: DpopKey) -> None:
    answer = oidc.token("dave", dpop=dave)
    assert answer["token_type"] == "DPoP"
    said = oidc.introspect(answer["access_token"]).json()
    assert said["active"] and said["token_type"] == "DPoP" and said["cnf"] == {"jkt": dave.jkt}


@pytest.mark.parametrize("resource", [OPAQUE_RESOURCE, JWT_RESOURCE])
def test_a_dpop_bound_token_with_fresh_proofs_reaches_the_upstream_beside_a_certificate_bound_one(
    stack: Stack, oidc: OidcProvider, dave: DpopKey, pki: TestPki, resource: str
) -> None:
    token = oidc.access_token("dave", dpop=dave, resource=resource)
    url = stack.nginx.url + PATH
    for method in ("GET", "POST", "GET"):  # a miss, then cache hits: a new proof each time
        assert call(stack, token, dave.proof(method, url, token), method=method) == 200, stack.diagnostics()
        seen = stack.upstream.last
        assert seen.method == method
        assert seen.header("x-credential-client-id") == "dave"
        assert seen.header("x-credential-aud") == resource
        assert seen.header("x-credential-cnf-jkt") == dave.jkt
        assert seen.header("x-credential-cnf-method") == "dpop"
        assert seen.header("x-credential-cnf-x5t-s256") is None  # nginx drops an empty header
        assert seen.header("dpop") is None and seen.header("authorization") is None  # for the sidecar only
    # The query is not part of htu (RFC 9449 §4.3): a proof for the path passes with any query.
    assert call(stack, token, dave.proof("GET", url, token), path=PATH + "?page=2") == 200
    bound = oidc.access_token("alice", resource=resource)
    assert stack.call(bound, "alice").status == 200, stack.diagnostics()
    assert stack.upstream.last.header("x-credential-cnf-method") == "mtls"
    assert stack.upstream.last.header("x-credential-cnf-x5t-s256") == pki.alice.x5t_s256
    assert stack.upstream.last.header("x-credential-cnf-jkt") is None
    assert stack.call(oidc.access_token("carol", resource=resource)).status == 401  # unbound under strict


def test_a_dpop_bound_token_sent_as_bearer_is_refused_and_both_challenges_are_offered(
    stack: Stack, oidc: OidcProvider, dave: DpopKey
) -> None:
    token = oidc.access_token("dave", dpop=dave)
    before = denials(stack, "dpop_scheme_required")
    reply = stack.call(token, headers={"DPoP": dave.proof("GET", stack.nginx.url + PATH, token)})
    assert reply.status == 401
    challenge = reply.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="api", error="invalid_token"')
    assert 'DPoP realm="api", algs="ES256 ES384 Ed25519 EdDSA PS256 RS256"' in challenge
    assert denials(stack, "dpop_scheme_required") == before + 1
    assert stack.call().headers["www-authenticate"] == ('Bearer realm="api", DPoP realm="api", '
                                                        'algs="ES256 ES384 Ed25519 EdDSA PS256 RS256"')


Hostile = Callable[[Stack, str, DpopKey], tuple[str | None, dict[str, object]]]


def _big(stack: Stack, token: str, key: DpopKey) -> tuple[str | None, dict[str, object]]:
    return key.proof("GET", stack.nginx.url + PATH, token, header={"pad": "x" * 3000}), {}


HOSTILE: dict[str, Hostile] = {
    "dpop_htm_mismatch": lambda s, t, k: (k.proof("POST", s.nginx.url + PATH, t), {}),
    "dpop_htu_mismatch": lambda s, t, k: (k.proof("GET", s.nginx.url + "/orders/43", t), {}),
    "dpop_iat_too_old": lambda s, t, k: (k.proof("GET", s.nginx.url + PATH, t, iat=time.time() - 120), {}),
    "dpop_iat_in_future": lambda s, t, k: (k.proof("GET", s.nginx.url + PATH, t, iat=time.time() + 120), {}),
    "dpop_algorithm_not_allowed": lambda s, t, k: (unsigned("GET", s.nginx.url + PATH, t, k.jwk), {}),
    "dpop_bad_key": lambda s, t, k: (k.proof("GET", s.nginx.url + PATH, t, jwk=k.private_jwk), {}),
    "dpop_ath_mismatch": lambda s, t, k: (k.proof("GET", s.nginx.url + PATH, ath=ath_of(t + "x")), {}),
    "dpop_key_mismatch": lambda s, t, k: (DpopKey().proof("GET", s.nginx.url + PATH, t), {}),
    "dpop_invalid_signature": lambda s, t, k: (DpopKey().proof("GET", s.nginx.url + PATH, t, jwk=k.jwk), {}),
    "dpop_proof_missing": lambda s, t, k: (None, {}),
    "dpop_proof_duplicated": lambda s, t, k: (k.proof("GET", s.nginx.url + PATH, t),
                                              {"repeated": [("DPoP", k.proof("GET", s.nginx.url + PATH, t))]}),
    "dpop_proof_too_large": _big,
    "dpop_wrong_type": lambda s, t, k: (k.proof("GET", s.nginx.url + PATH, t, typ="JWT"), {}),
}


@pytest.mark.parametrize("reason", sorted(HOSTILE))
def test_a_hostile_proof_is_refused_with_the_dpop_challenge_and_its_reason(
    stack: Stack, oidc: OidcProvider, dave: DpopKey, reason: str
) -> None:
    token = oidc.access_token("dave", dpop=dave)
    url = stack.nginx.url + PATH
    assert call(stack, token, dave.proof("GET", url, token)) == 200, stack.diagnostics()  # the token is good
    proof, extra = HOSTILE[reason](stack, token, dave)
    before = denials(stack, reason)
    reached = len(stack.upstream.received)
    headers = {"Authorization": f"DPoP {token}", **({"DPoP": proof} if proof is not None else {})}
    reply = stack.call(None, path=PATH, headers=headers, **extra)  # type: ignore[arg-type]
    assert reply.status == 401, (reason, reply.status, stack.diagnostics())
    assert reply.headers["www-authenticate"].startswith('Bearer realm="api", DPoP realm="api", '
                                                        'error="invalid_dpop_proof"')
    assert denials(stack, reason) == before + 1, stack.sidecar.logs()
    assert len(stack.upstream.received) == reached


def test_hmac_proofs_and_replayed_proofs_are_refused(stack: Stack, oidc: OidcProvider, dave: DpopKey) -> None:
    token = oidc.access_token("dave", dpop=dave)
    url = stack.nginx.url + PATH
    before = denials(stack, "dpop_algorithm_not_allowed")
    assert call(stack, token, hmac_signed("GET", url, token, dave.jwk, b"k" * 32)) == 401
    assert denials(stack, "dpop_algorithm_not_allowed") == before + 1
    proof = dave.proof("GET", url, token)
    assert call(stack, token, proof) == 200
    before = denials(stack, "dpop_replayed")
    assert call(stack, token, proof) == 401
    assert denials(stack, "dpop_replayed") == before + 1


def test_a_proof_for_another_of_the_same_clients_tokens_is_refused(
    stack: Stack, oidc: OidcProvider, dave: DpopKey
) -> None:
    first, second = (oidc.access_token("dave", dpop=dave) for _ in range(2))
    url = stack.nginx.url + PATH
    before = denials(stack, "dpop_ath_mismatch")
    assert call(stack, second, dave.proof("GET", url, first)) == 401
    assert denials(stack, "dpop_ath_mismatch") == before + 1
    assert call(stack, second, dave.proof("GET", url, second)) == 200


def test_with_dpop_off_a_dpop_bound_token_is_refused_whatever_it_carries(
    stacks: StartStack, oidc: OidcProvider, dave: DpopKey
) -> None:
    stack = stacks(SIDECAR_POLICY__BINDING="optional")
    token = oidc.access_token("dave", dpop=dave)
    proof = dave.proof("GET", stack.nginx.url + PATH, token)
    assert call(stack, token, proof, scheme="Bearer") == 401
    assert denials(stack, "cnf_unsupported") >= 1
    assert call(stack, token, dave.proof("GET", stack.nginx.url + PATH, token)) == 401  # DPoP scheme: no token
