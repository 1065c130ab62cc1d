"""Every confirmation method a token's ``cnf`` holds must hold (RFC 7800 §3; issue 22, case 7),
through the real HTTP check route, the fake IdP over mutual TLS: a token bound both to a DPoP key
(``jkt``, RFC 9449 §6) and to a certificate (``x5t#S256``, RFC 8705 §3) passes only with a valid
proof of the key *and* the certificate, and the upstream is told both were verified. (No IdP here
issues one: oidc-provider refuses a proof from a certificate-bound client; the token is minted.)"""

from __future__ import annotations

import pytest

from sidecar.dev.fakeidp import FakeIdp
from tests.conftest import MakeSidecar, escaped_pem
from tests.support.dpop_proof import DpopKey
from tests.support.pki_fixtures import TestPki

pytestmark = pytest.mark.dpop
URL = "https://api.example/orders/1"
ORIGINAL = {"X-Original-Method": "GET", "X-Original-URI": "/orders/1", "Host": "api.example",
            "X-Forwarded-Proto": "https"}


async def test_a_token_bound_by_both_methods_needs_the_proof_and_the_certificate(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar(dpop={"enabled": True}, routing={"origins": ["https://api.example"]})
    key = DpopKey()
    token = idp.mint("alice", token_type="DPoP")
    idp.tokens[token]["cnf"] = {"jkt": key.jkt, "x5t#S256": pki.alice.x5t_s256}

    async def check(cert: str | None, proof: str | None, scheme: str = "DPoP") -> tuple[int, str]:
        headers = {"Authorization": f"{scheme} {token}", **ORIGINAL}
        if cert is not None:
            headers["x-client-cert"] = cert
        if proof is not None:
            headers["DPoP"] = proof
        response = await running.client.get("/check", headers=headers)
        if response.status == 200:
            return 200, response.headers["x-credential-cnf-method"]
        return response.status, (await response.json())["reason"]

    alice, bob = escaped_pem(pki.alice), escaped_pem(pki.bob)
    assert await check(alice, key.proof("GET", URL, token)) == (200, "dpop mtls")
    assert await check(None, key.proof("GET", URL, token)) == (401, "cert_missing")  # the proof alone
    assert await check(bob, key.proof("GET", URL, token)) == (401, "cnf_mismatch")
    assert await check(alice, None) == (401, "dpop_proof_missing")  # the certificate alone
    assert await check(alice, None, scheme="Bearer") == (401, "dpop_scheme_required")
    assert await check(alice, DpopKey().proof("GET", URL, token)) == (401, "dpop_key_mismatch")
