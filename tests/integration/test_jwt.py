"""RFC 9068 JWT access tokens end to end: the sidecar fetches the fake IdP's JWK Set over real
mutual TLS and validates at+jwt tokens locally, then binds and authorizes them like introspected
tokens. The fake IdP, like oidc-provider 8.x, answers ``active: false`` when asked to introspect
a JWT access token, so an allow proves the local path.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import ssl
import time
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization

from sidecar.dev.devidp import Client
from sidecar.dev.fakeidp import FakeIdp, Fault
from tests.conftest import MakeSidecar, Running
from tests.support.pki_fixtures import TestPki

JWT_POLICY = {"audiences": ["api"]}


@pytest.fixture
def signing_idp(idp: FakeIdp) -> FakeIdp:
    idp.add_signing_key("ES256", kid="k1")
    return idp


@pytest.fixture
async def jwt_sidecar(make_sidecar: MakeSidecar, signing_idp: FakeIdp) -> Running:
    return await make_sidecar(policy=JWT_POLICY)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}.{b64url(signature)}"


def claims(idp: FakeIdp, pki: TestPki, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": idp.issuer, "aud": "api", "client_id": "alice", "sub": "alice", "iat": now,
            "exp": now + 300, "cnf": {"x5t#S256": pki.alice.x5t_s256}, **extra}


async def reason(response: aiohttp.ClientResponse) -> str:
    body: dict[str, str] = await response.json()
    return body["reason"]


async def test_a_bound_jwt_with_its_certificate_is_allowed_locally_with_credential_headers(
    jwt_sidecar: Running, signing_idp: FakeIdp, pki: TestPki
) -> None:
    token = signing_idp.mint_jwt("alice", cnf=pki.alice.x5t_s256, scope="read write", aud=["api", "billing"])
    response = await jwt_sidecar.check(token, pki.alice)
    assert response.status == 200
    h = response.headers
    assert h["x-credential-sub"] == "alice" and h["x-credential-client-id"] == "alice"
    assert h["x-credential-scope"] == "read write" and h["x-credential-aud"] == "api billing"
    assert h["x-credential-iss"] == signing_idp.issuer
    assert h["x-credential-cnf-x5t-s256"] == pki.alice.x5t_s256
    assert signing_idp.introspect_requests == 0 and signing_idp.jwks_requests == 1


async def test_the_same_jwt_with_another_clients_certificate_is_cnf_mismatch(
    jwt_sidecar: Running, signing_idp: FakeIdp, pki: TestPki
) -> None:
    response = await jwt_sidecar.check(signing_idp.mint_jwt("alice", cnf=pki.alice.x5t_s256), pki.bob)
    assert response.status == 401 and await reason(response) == "cnf_mismatch"
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="api", error="invalid_token"')


async def test_a_jwt_from_the_idps_token_endpoint_over_mtls_is_bound_and_allowed(
    make_sidecar: MakeSidecar, signing_idp: FakeIdp, pki: TestPki
) -> None:
    signing_idp.add_client(Client("alice", jwt_access_tokens=True))
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.load_cert_chain(*pki.alice_files)
    async with aiohttp.ClientSession() as session, session.post(
        f"{signing_idp.issuer}/token", data={"grant_type": "client_credentials", "client_id": "alice"}, ssl=context
    ) as answer:
        token = (await answer.json())["access_token"]
    assert token.count(".") == 2
    running = await make_sidecar(policy=JWT_POLICY)
    assert (await running.check(token, pki.alice)).status == 200
    assert (await running.check(token, pki.bob)).status == 401


async def test_an_expired_jwt_is_token_expired(jwt_sidecar: Running, signing_idp: FakeIdp, pki: TestPki) -> None:
    now = int(time.time())
    token = signing_idp.mint_jwt("alice", cnf=pki.alice.x5t_s256, iat=now - 600, exp=now - 60)
    response = await jwt_sidecar.check(token, pki.alice)
    assert response.status == 401 and await reason(response) == "token_expired"


@pytest.mark.parametrize("typ", ["JWT", "id_token+jwt", None])
async def test_a_signed_jwt_that_is_not_typed_at_jwt_is_refused(
    jwt_sidecar: Running, signing_idp: FakeIdp, pki: TestPki, typ: str | None
) -> None:
    token = signing_idp.mint_jwt("alice", cnf=pki.alice.x5t_s256, header={"typ": typ})
    response = await jwt_sidecar.check(token, pki.alice)
    assert response.status == 401 and await reason(response) == "jwt_wrong_type"


async def test_application_at_jwt_is_accepted_as_the_type(jwt_sidecar: Running, signing_idp: FakeIdp,
                                                           pki: TestPki) -> None:
    token = signing_idp.mint_jwt("alice", cnf=pki.alice.x5t_s256, header={"typ": "application/at+jwt"})
    assert (await jwt_sidecar.check(token, pki.alice)).status == 200


async def test_alg_none_is_refused(jwt_sidecar: Running, signing_idp: FakeIdp, pki: TestPki) -> None:
    token = forge({"alg": "none", "typ": "at+jwt", "kid": "k1"}, claims(signing_idp, pki))
    response = await jwt_sidecar.check(token, pki.alice)
    assert response.status == 401 and await reason(response) == "jwt_algorithm_not_allowed"


async def test_hs256_signed_with_the_public_key_as_secret_is_refused(
    jwt_sidecar: Running, signing_idp: FakeIdp, pki: TestPki
) -> None:
    public_pem = signing_idp.signing_keys[0].private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    unsigned = forge({"alg": "HS256", "typ": "at+jwt", "kid": "k1"}, claims(signing_idp, pki)).rsplit(".", 1)[0]
    token = f"{unsigned}.{b64url(hmac.new(public_pem, unsigned.encode(), hashlib.sha256).digest())}"
    response = await jwt_sidecar.check(token, pki.alice)
    assert response.status == 401 and await reason(response) == "jwt_algorithm_not_allowed"


async def test_a_jwt_signed_by_another_key_under_a_known_kid_is_an_invalid_signature(
    jwt_sidecar: Running, signing_idp: FakeIdp, pki: TestPki
) -> None:
    from sidecar.dev.devidp import SigningKey

    impostor = SigningKey.generate("ES256", kid="k1")
    token = signing_idp.mint_jwt("alice", cnf=pki.alice.x5t_s256, key=impostor)
    response = await jwt_sidecar.check(token, pki.alice)
    assert response.status == 401 and await reason(response) == "jwt_invalid_signature"


async def test_a_jwt_from_another_issuer_is_refused(jwt_sidecar: Running, signing_idp: FakeIdp, pki: TestPki) -> None:
    token = signing_idp.mint_jwt("alice", cnf=pki.alice.x5t_s256, iss="https://evil.example")
    response = await jwt_sidecar.check(token, pki.alice)
    assert response.status == 401 and await reason(response) == "issuer_not_allowed"


async def test_a_jwt_for_another_audience_is_refused(jwt_sidecar: Running, signing_idp: FakeIdp,
                                                     pki: TestPki) -> None:
    token = signing_idp.mint_jwt("alice", cnf=pki.alice.x5t_s256, aud="billing")
    response = await jwt_sidecar.check(token, pki.alice)
    assert response.status == 401 and await reason(response) == "audience_mismatch"


async def test_unknown_kids_cause_one_jwks_refresh_then_deny_without_a_storm(
    make_sidecar: MakeSidecar, signing_idp: FakeIdp, pki: TestPki
) -> None:
    from sidecar.dev.devidp import SigningKey

    # Twenty misses at once from one client: more than its share of the IdP slots (admission.py).
    jwt_sidecar = await make_sidecar(policy=JWT_POLICY, admission={"max_share": 1.0})
    assert (await jwt_sidecar.check(signing_idp.mint_jwt("alice", cnf=pki.alice.x5t_s256), pki.alice)).status == 200
    assert signing_idp.jwks_requests == 1
    forged = [signing_idp.mint_jwt("alice", cnf=pki.alice.x5t_s256, key=SigningKey.generate(kid=f"forged-{i}"))
              for i in range(20)]
    responses = await asyncio.gather(*(jwt_sidecar.check(token, pki.alice) for token in forged))
    assert {r.status for r in responses} == {401}
    assert {await reason(r) for r in responses} == {"jwt_unknown_key"}
    assert signing_idp.jwks_requests == 2  # concurrent: one shared refresh for twenty forged kids
    for token in forged[:5]:  # one after another, within jwks_min_refresh_interval: no refresh at all
        assert await reason(await jwt_sidecar.check(token, pki.alice)) == "jwt_unknown_key"
    assert signing_idp.jwks_requests == 2


async def test_a_key_rotated_in_at_the_idp_is_accepted_after_one_refresh(
    jwt_sidecar: Running, signing_idp: FakeIdp, pki: TestPki
) -> None:
    assert (await jwt_sidecar.check(signing_idp.mint_jwt("alice", cnf=pki.alice.x5t_s256), pki.alice)).status == 200
    signing_idp.add_signing_key("RS256", kid="k2")
    token = signing_idp.mint_jwt("alice", cnf=pki.alice.x5t_s256)
    assert (await jwt_sidecar.check(token, pki.alice)).status == 200
    assert signing_idp.jwks_requests == 2


async def test_jwks_endpoint_down_is_503_not_ready_and_recovers(
    make_sidecar: MakeSidecar, signing_idp: FakeIdp, pki: TestPki
) -> None:
    signing_idp.jwks_fault = Fault(status=500)
    running = await make_sidecar(policy=JWT_POLICY)
    running.sidecar.issuer.jwks.RETRY_AFTER = 0  # type: ignore[union-attr]
    token = signing_idp.mint_jwt("alice", cnf=pki.alice.x5t_s256)
    response = await running.check(token, pki.alice)
    assert response.status == 503 and await reason(response) == "idp_unavailable"
    ready = await running.admin.get("/readyz")
    assert ready.status == 503 and (await ready.json())["reason"] == "jwks_pending"
    metrics = await (await running.admin.get("/metrics")).text()
    assert 'sidecar_idp_requests_total{kind="jwks",result="http_500"}' in metrics
    signing_idp.jwks_fault = None
    assert (await running.check(token, pki.alice)).status == 200
    assert (await running.admin.get("/readyz")).status == 200


async def test_readiness_waits_for_the_first_jwks_load(make_sidecar: MakeSidecar, signing_idp: FakeIdp) -> None:
    running = await make_sidecar(policy=JWT_POLICY)
    for _ in range(100):
        if (await running.admin.get("/readyz")).status == 200:
            break
        await asyncio.sleep(0.02)
    assert running.sidecar.issuer.jwks is not None and running.sidecar.issuer.jwks.ready
    assert signing_idp.jwks_requests == 1


async def test_auto_validates_jwt_shaped_tokens_locally_and_introspects_opaque_ones(
    jwt_sidecar: Running, signing_idp: FakeIdp, pki: TestPki
) -> None:
    assert jwt_sidecar.sidecar.config.idp.token_format == "auto"
    opaque = signing_idp.mint("alice", cnf=pki.alice.x5t_s256, aud="api")
    assert (await jwt_sidecar.check(opaque, pki.alice)).status == 200
    assert signing_idp.introspect_requests == 1
    jwt_token = signing_idp.mint_jwt("alice", cnf=pki.alice.x5t_s256)
    assert (await jwt_sidecar.check(jwt_token, pki.alice)).status == 200
    assert signing_idp.introspect_requests == 1


async def test_auto_introspects_everything_when_no_audience_is_configured(
    make_sidecar: MakeSidecar, signing_idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar()
    assert running.sidecar.issuer.jwks is None
    response = await running.check(signing_idp.mint_jwt("alice", cnf=pki.alice.x5t_s256), pki.alice)
    assert response.status == 401 and await reason(response) == "token_inactive"  # the IdP cannot introspect it
    assert signing_idp.introspect_requests == 1 and signing_idp.jwks_requests == 0


async def test_jwt_then_introspection_validates_at_jwt_locally_and_introspects_the_rest(
    make_sidecar: MakeSidecar, signing_idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar(idp={"token_format": "jwt_then_introspection"}, policy=JWT_POLICY)
    assert (await running.check(signing_idp.mint_jwt("alice", cnf=pki.alice.x5t_s256), pki.alice)).status == 200
    assert signing_idp.introspect_requests == 0
    opaque = signing_idp.mint("alice", cnf=pki.alice.x5t_s256, aud="api")
    assert (await running.check(opaque, pki.alice)).status == 200
    assert signing_idp.introspect_requests == 1
    other_jwt = signing_idp.mint_jwt("alice", cnf=pki.alice.x5t_s256, header={"typ": "JWT"})
    response = await running.check(other_jwt, pki.alice)
    assert response.status == 401 and await reason(response) == "token_inactive"
    assert signing_idp.introspect_requests == 2


async def test_jwt_then_introspection_never_introspects_an_at_jwt_that_failed_locally(
    make_sidecar: MakeSidecar, signing_idp: FakeIdp, pki: TestPki
) -> None:
    from sidecar.dev.devidp import SigningKey

    running = await make_sidecar(idp={"token_format": "jwt_then_introspection"}, policy=JWT_POLICY)
    bad_signature = signing_idp.mint_jwt("alice", cnf=pki.alice.x5t_s256, key=SigningKey.generate(kid="k1"))
    unknown_key = signing_idp.mint_jwt("alice", cnf=pki.alice.x5t_s256, key=SigningKey.generate(kid="k9"))
    assert await reason(await running.check(bad_signature, pki.alice)) == "jwt_invalid_signature"
    assert await reason(await running.check(unknown_key, pki.alice)) == "jwt_unknown_key"
    assert signing_idp.introspect_requests == 0


async def test_jwt_format_refuses_an_opaque_token_without_asking_the_idp(
    make_sidecar: MakeSidecar, signing_idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar(idp={"token_format": "jwt"}, policy=JWT_POLICY)
    response = await running.check(signing_idp.mint("alice", cnf=pki.alice.x5t_s256), pki.alice)
    assert response.status == 401 and await reason(response) == "jwt_malformed"
    assert signing_idp.introspect_requests == 0


async def test_a_valid_jwt_is_cached_until_exp_and_rechecked_without_the_idp(
    jwt_sidecar: Running, signing_idp: FakeIdp, pki: TestPki
) -> None:
    token = signing_idp.mint_jwt("alice", cnf=pki.alice.x5t_s256, lifetime=60)
    for cert, status in ((pki.alice, 200), (pki.alice, 200), (pki.bob, 401)):
        assert (await jwt_sidecar.check(token, cert)).status == status
    cache = jwt_sidecar.sidecar.decider.cache
    entry = cache.get(cache.key(token))
    assert entry is not None and entry.expires - time.monotonic() <= 60
    metrics = await (await jwt_sidecar.admin.get("/metrics")).text()
    assert 'sidecar_cache_total{result="hit"} 2.0' in metrics
    assert signing_idp.jwks_requests == 1 and signing_idp.introspect_requests == 0


async def test_the_jwk_set_is_fetched_over_mutual_tls_with_the_sidecars_certificate(
    jwt_sidecar: Running, signing_idp: FakeIdp, pki: TestPki
) -> None:
    assert (await jwt_sidecar.check(signing_idp.mint_jwt("alice", cnf=pki.alice.x5t_s256), pki.alice)).status == 200
    assert signing_idp.jwks_peer == "sidecar"


JWKS_FAULTS = {
    "503": (Fault(status=503), "http_503"),
    "HTML": (Fault(body=b"<html>oops</html>", content_type="text/html"), "content_type"),
    "garbage JSON": (Fault(body=b"{not json"), "garbage"),
    "deeply nested JSON": (Fault(body=b"[" * 100_000), "garbage"),
    "only a symmetric key": (Fault(body=b'{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k1"}]}'), "unusable"),
    "over 256 KiB": (Fault(body=b'{"keys": [], "pad": "' + b"x" * 300_000 + b'"}'), "too_large"),
    "over 256 KiB, chunked": (Fault(body=b"x" * 300_000, chunked=True), "too_large"),
    "slow": (Fault(delay=1.5), "timeout"),
    "dropped connection": (Fault(drop=True), "disconnected"),
    "404": (Fault(status=404), "http_404"),
}


@pytest.mark.parametrize("case", JWKS_FAULTS.values(), ids=JWKS_FAULTS.keys())
async def test_a_jwk_set_that_cannot_be_had_fails_closed_with_503(
    make_sidecar: MakeSidecar, signing_idp: FakeIdp, pki: TestPki, case: tuple[Fault, str]
) -> None:
    fault, result = case
    signing_idp.jwks_fault = fault
    running = await make_sidecar(idp={"timeout": 0.5}, policy=JWT_POLICY)
    response = await running.check(signing_idp.mint_jwt("alice", cnf=pki.alice.x5t_s256), pki.alice)
    assert response.status == 503 and response.headers["Retry-After"] == "1"
    assert await reason(response) == "idp_unavailable"
    metrics = await (await running.admin.get("/metrics")).text()
    assert f'sidecar_idp_requests_total{{kind="jwks",result="{result}"}}' in metrics


async def test_auto_with_an_idp_without_jwks_uri_gets_ready_and_introspects(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar(policy=JWT_POLICY)
    for _ in range(100):
        if (await running.admin.get("/readyz")).status == 200:
            break
        await asyncio.sleep(0.02)
    assert (await running.admin.get("/readyz")).status == 200
    assert (await running.check(idp.mint("alice", cnf=pki.alice.x5t_s256, aud="api"), pki.alice)).status == 200
    assert idp.jwks_requests == 0 and idp.introspect_requests == 1


async def test_a_large_jwk_set_arriving_in_many_chunks_is_read_whole(
    make_sidecar: MakeSidecar, signing_idp: FakeIdp, pki: TestPki
) -> None:
    keys = [signing_idp.signing_keys[0].public_jwk()] + [
        {**signing_idp.add_signing_key("RS256").public_jwk(), "pad": "p" * 3000} for _ in range(20)
    ]
    body = json.dumps({"keys": keys}).encode()
    assert len(body) > 64 * 1024
    signing_idp.jwks_fault = Fault(body=body, chunked=True)
    running = await make_sidecar(policy=JWT_POLICY)
    token = signing_idp.mint_jwt("alice", cnf=pki.alice.x5t_s256, key=signing_idp.signing_keys[0])
    assert (await running.check(token, pki.alice)).status == 200
