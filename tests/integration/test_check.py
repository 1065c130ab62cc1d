"""The sidecar end to end against the fake IdP over real mutual TLS.

The IdP requires and verifies the sidecar's client certificate (tls_client_auth) and the sidecar
verifies the IdP's server certificate; tokens are bound to alice's certificate.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from sidecar.core import request as request_module
from sidecar.dev.fakeidp import FakeIdp, Fault
from tests.conftest import MakeSidecar, Running, escaped_pem
from tests.support.pki_fixtures import TestPki


def alice_token(idp: FakeIdp, pki: TestPki, **claims: Any) -> str:
    return idp.mint("alice", cnf=pki.alice.x5t_s256, **claims)


async def test_allows_a_bound_token_with_its_certificate_and_sends_credential_headers(
    sidecar: Running, idp: FakeIdp, pki: TestPki
) -> None:
    token = alice_token(idp, pki, scope="read write", username="alice@example", aud=["api", "billing"])
    response = await sidecar.check(token, pki.alice)
    assert response.status == 200
    h = response.headers
    record = idp.tokens[token]
    assert h["x-credential-sub"] == "alice" and h["x-credential-client-id"] == "alice"
    assert h["x-credential-scope"] == "read write" and h["x-credential-username"] == "alice@example"
    assert h["x-credential-aud"] == "api billing" and h["x-credential-iss"] == idp.issuer
    assert h["x-credential-exp"] == str(record["exp"]) and h["x-credential-iat"] == str(record["iat"])
    assert h["x-credential-jti"] == record["jti"] and h["x-credential-token-type"] == "Bearer"
    assert h["x-credential-cnf-x5t-s256"] == pki.alice.x5t_s256
    assert idp.last_form is not None and idp.last_form["client_id"] == "sidecar"
    assert idp.last_form["token_type_hint"] == "access_token"


async def test_denies_the_token_with_another_clients_certificate(sidecar: Running, idp: FakeIdp, pki: TestPki) -> None:
    response = await sidecar.check(alice_token(idp, pki), pki.bob)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="api", error="invalid_token"')
    assert (await response.json()) == {"error": "invalid_token", "reason": "cnf_mismatch"}
    assert "x-credential-sub" not in response.headers


async def test_denies_a_bound_token_without_a_certificate(sidecar: Running, idp: FakeIdp, pki: TestPki) -> None:
    response = await sidecar.check(alice_token(idp, pki))
    assert response.status == 401 and (await response.json())["reason"] == "cert_missing"


@pytest.mark.parametrize(("mode", "status", "reason"),
                         [("strict", 401, "token_unbound"), ("optional", 200, None), ("off", 200, None)])
async def test_unbound_token_in_each_binding_mode(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, mode: str, status: int, reason: str | None
) -> None:
    running = await make_sidecar(policy={"binding": mode})
    response = await running.check(idp.mint("carol"), pki.alice)
    assert response.status == status
    if reason:
        assert (await response.json())["reason"] == reason


async def test_binding_off_ignores_a_mismatching_certificate(make_sidecar: MakeSidecar, idp: FakeIdp,
                                                             pki: TestPki) -> None:
    running = await make_sidecar(policy={"binding": "off"})
    assert (await running.check(alice_token(idp, pki), pki.bob)).status == 200


async def test_inactive_unknown_token_is_401(sidecar: Running, pki: TestPki) -> None:
    response = await sidecar.check("not-a-real-token", pki.alice)
    assert response.status == 401 and (await response.json())["reason"] == "token_inactive"


async def test_expired_token_reported_active_is_still_denied(sidecar: Running, idp: FakeIdp, pki: TestPki) -> None:
    token = alice_token(idp, pki)
    idp.tokens[token]["exp"] = int(time.time()) - 3600
    idp.fault = Fault(body=_json(idp.tokens[token]))  # a lax IdP that says active anyway
    response = await sidecar.check(token, pki.alice)
    assert response.status == 401 and (await response.json())["reason"] == "token_expired"


async def test_exp_is_rechecked_on_every_cache_hit(sidecar: Running, idp: FakeIdp, pki: TestPki,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    token = alice_token(idp, pki, lifetime=60)
    assert (await sidecar.check(token, pki.alice)).status == 200
    later = time.time() + 120
    # A cached token is checked at the check's arrival (CheckRequest.started).
    monkeypatch.setattr(request_module, "time", lambda: later)
    response = await sidecar.check(token, pki.alice)
    assert response.status == 401 and (await response.json())["reason"] == "token_expired"
    assert idp.introspect_requests == 1  # it was a cache hit


async def test_missing_scope_is_403_with_scope_in_the_challenge(make_sidecar: MakeSidecar, idp: FakeIdp,
                                                                pki: TestPki) -> None:
    running = await make_sidecar(policy={"required_scopes": ["write"]})
    response = await running.check(alice_token(idp, pki, scope="read"), pki.alice)
    assert response.status == 403
    assert response.headers["WWW-Authenticate"].endswith('error="insufficient_scope", error_description='
                                                         '"The access token lacks a required scope", scope="write"')


async def test_issuer_and_audience_policy(make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki) -> None:
    running = await make_sidecar(policy={"allowed_issuers": [idp.issuer], "audiences": ["api"]})
    assert (await running.check(alice_token(idp, pki, aud="api"), pki.alice)).status == 200
    other = await running.check(alice_token(idp, pki, aud="billing"), pki.alice)
    assert (await other.json())["reason"] == "audience_mismatch"
    foreign = await running.check(alice_token(idp, pki, aud="api", iss="https://evil"), pki.alice)
    assert (await foreign.json())["reason"] == "issuer_not_allowed"


async def test_missing_and_malformed_authorization(sidecar: Running) -> None:
    missing = await sidecar.client.get("/")
    assert missing.status == 401 and missing.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    malformed = await sidecar.client.get("/", headers={"Authorization": "Bearer a b"})
    assert malformed.status == 400 and 'error="invalid_request"' in malformed.headers["WWW-Authenticate"]


async def test_invalid_request_status_can_be_401_for_nginx(make_sidecar: MakeSidecar) -> None:
    running = await make_sidecar(server={"invalid_request_status": 401})
    response = await running.client.get("/", headers={"Authorization": "Bearer a b"})
    assert response.status == 401 and 'error="invalid_request"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_any_method_on_any_path_is_a_check(sidecar: Running, idp: FakeIdp, pki: TestPki, method: str) -> None:
    headers = {"Authorization": f"Bearer {alice_token(idp, pki)}", "x-client-cert": escaped_pem(pki.alice)}
    response = await sidecar.client.request(method, "/ext_authz/api/v1/items?x=1&y=%2F", headers=headers)
    assert response.status == 200


async def test_a_certificate_chain_header_above_8kb_is_accepted(make_sidecar: MakeSidecar, idp: FakeIdp,
                                                                 pki: TestPki) -> None:
    running = await make_sidecar(client_cert={"format": "escaped_pem"})  # auto refuses chains in one header
    chain = escaped_pem(pki.alice) + escaped_pem(pki.bob) * 20
    assert 8190 < len(chain) <= running.sidecar.config.client_cert.max_size
    response = await running.client.get("/", headers={"Authorization": f"Bearer {alice_token(idp, pki)}",
                                                      "x-client-cert": chain})
    assert response.status == 200


async def test_a_certificate_header_over_client_cert_max_size_is_refused_without_parsing(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar(client_cert={"format": "escaped_pem", "max_size": 4096})
    chain = escaped_pem(pki.alice) + escaped_pem(pki.bob) * 10
    response = await running.client.get("/", headers={"Authorization": f"Bearer {alice_token(idp, pki)}",
                                                      "x-client-cert": chain})
    assert response.status == 401 and (await response.json())["reason"] == "cert_invalid"


async def test_certificate_header_from_an_untrusted_peer_is_ignored(make_sidecar: MakeSidecar, idp: FakeIdp,
                                                                    pki: TestPki) -> None:
    running = await make_sidecar(client_cert={"trusted_proxies": ["10.0.0.0/8"]})
    response = await running.check(alice_token(idp, pki), pki.alice)
    assert response.status == 401 and (await response.json())["reason"] == "cert_missing"


async def test_a_garbage_certificate_header_is_a_clean_401(sidecar: Running, idp: FakeIdp, pki: TestPki) -> None:
    response = await sidecar.client.get("/", headers={"Authorization": f"Bearer {alice_token(idp, pki)}",
                                                      "x-client-cert": "%ZZnot-a-cert"})
    assert response.status == 401 and (await response.json())["reason"] == "cert_invalid"


async def test_one_hundred_concurrent_requests_for_a_new_token_make_one_idp_call(
    sidecar: Running, idp: FakeIdp, pki: TestPki
) -> None:
    token = alice_token(idp, pki)
    idp.fault = Fault(delay=0.2)
    responses = await asyncio.gather(*(sidecar.check(token, pki.alice) for _ in range(100)))
    assert [r.status for r in responses] == [200] * 100
    assert idp.introspect_requests == 1


async def test_cache_ttl_is_capped_by_exp(make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki) -> None:
    running = await make_sidecar(cache={"max_ttl": 300})
    token = alice_token(idp, pki, lifetime=2)
    assert (await running.check(token, pki.alice)).status == 200
    cache = running.sidecar.decider.cache
    entry = cache.get(cache.key(token))
    assert entry is not None and entry.expires - time.monotonic() <= 2.0
    await asyncio.sleep(2.1)
    assert cache.get(cache.key(token)) is None


async def test_inactive_answers_are_cached_for_the_negative_ttl_only(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar(cache={"negative_ttl": 0.3})
    for _ in range(3):
        assert (await running.check("unknown", pki.alice)).status == 401
    assert idp.introspect_requests == 1
    await asyncio.sleep(0.35)
    await running.check("unknown", pki.alice)
    assert idp.introspect_requests == 2


IDP_FAULTS = {
    "500": Fault(status=500),
    "502": Fault(status=502),
    "401 (our client auth rejected)": Fault(status=401),
    "garbage": Fault(body=b"<html>oops</html>"),
    "non-object JSON": Fault(body=b"[1,2]"),
    "wrong types": Fault(body=b'{"active": "yes"}'),
    "wrong content type": Fault(body=b'{"active": true}', content_type="text/html"),
    "slow": Fault(delay=1.5),
    "dropped connection": Fault(drop=True),
}


@pytest.mark.parametrize("fault", IDP_FAULTS.values(), ids=IDP_FAULTS.keys())
async def test_idp_failures_fail_closed_with_503_and_are_not_cached(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, fault: Fault
) -> None:
    running = await make_sidecar(idp={"timeout": 0.5})
    token = alice_token(idp, pki)
    idp.fault = fault
    response = await running.check(token, pki.alice)
    assert response.status == 503 and response.headers["Retry-After"] == "1"
    assert (await response.json())["reason"] == "idp_unavailable"
    idp.fault = None
    assert (await running.check(token, pki.alice)).status == 200  # recovers by itself


async def test_idp_down_is_503_and_counted_in_metrics(sidecar: Running, idp: FakeIdp, pki: TestPki) -> None:
    token = alice_token(idp, pki)
    await sidecar.admin.get("/readyz")
    await idp.server.close()  # type: ignore[attr-defined]
    response = await sidecar.check(token, pki.alice)
    assert response.status == 503
    metrics = await (await sidecar.admin.get("/metrics")).text()
    assert 'sidecar_decisions_total{outcome="deny",policy="default",reason="idp_unavailable"} 1.0' in metrics
    assert 'sidecar_idp_requests_total{kind="introspection",result="refused"} 2.0' in metrics  # one safe retry
    assert 'sidecar_idp_retries_total{issuer="default",result="refused"} 1.0' in metrics


async def test_the_idp_rejects_a_sidecar_without_the_right_client_certificate(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar(idp={"cert_file": str(pki.bob_files[0]), "key_file": str(pki.bob_files[1])})
    response = await running.check(alice_token(idp, pki), pki.alice)
    assert response.status == 503


async def test_the_sidecar_rejects_an_idp_it_cannot_verify(make_sidecar: MakeSidecar, idp: FakeIdp,
                                                           pki: TestPki, tmp_path: Any) -> None:
    from sidecar.dev.pki import CertificateAuthority

    other_ca = tmp_path / "other.crt"
    other_ca.write_bytes(CertificateAuthority("other").root.cert_pem)
    running = await make_sidecar(idp={"ca_file": str(other_ca)})
    response = await running.check(alice_token(idp, pki), pki.alice)
    assert response.status == 503
    ready = await running.admin.get("/readyz")
    assert ready.status == 503 and (await ready.json())["reason"] == "discovery_pending"


async def test_no_token_or_key_material_in_any_log_record_or_body(
    sidecar: Running, idp: FakeIdp, pki: TestPki, captured_logs: pytest.LogCaptureFixture
) -> None:
    token = alice_token(idp, pki)
    bodies = []
    for cert in (pki.alice, pki.bob, None):
        bodies.append(await (await sidecar.check(token, cert)).read())
    idp.fault = Fault(status=500)
    bodies.append(await (await sidecar.check(alice_token(idp, pki), pki.alice)).read())
    bodies.append(await (await sidecar.client.get("/", headers={"Authorization": f"Bearer {token} x"})).read())
    text = "\n".join(r.getMessage() + repr(r.__dict__) for r in captured_logs.records)
    assert "deny" in text and "allow" in text
    key_body = pki.sidecar.key_pem.decode().splitlines()[1]
    for secret in (token, key_body):
        assert secret not in text
        assert all(secret.encode() not in body for body in bodies)


async def test_admin_endpoints(sidecar: Running, idp: FakeIdp, pki: TestPki) -> None:
    assert (await sidecar.admin.get("/healthz")).status == 200
    for _ in range(50):
        if (await sidecar.admin.get("/readyz")).status == 200:
            break
        await asyncio.sleep(0.02)
    assert (await sidecar.admin.get("/readyz")).status == 200
    token = alice_token(idp, pki)
    await sidecar.check(token, pki.alice)
    await sidecar.check(token, pki.alice)
    metrics = await (await sidecar.admin.get("/metrics")).text()
    assert 'sidecar_decisions_total{outcome="allow",policy="default",reason="ok"} 2.0' in metrics
    assert 'sidecar_cache_total{result="hit"} 1.0' in metrics
    assert "sidecar_cache_entries 1.0" in metrics
    assert "sidecar_idp_request_seconds_bucket" in metrics
    assert (await sidecar.client.get("/metrics")).status == 401  # the check port only checks


def _json(value: dict[str, Any]) -> bytes:
    import json

    return json.dumps(value).encode()


async def test_a_duplicated_certificate_header_is_denied_even_when_the_token_is_cached(
    sidecar: Running, idp: FakeIdp, pki: TestPki
) -> None:
    from multidict import CIMultiDict

    token = alice_token(idp, pki)
    assert (await sidecar.check(token, pki.alice)).status == 200  # now cached: the fast path applies
    headers = CIMultiDict([("Authorization", f"Bearer {token}"), ("x-client-cert", escaped_pem(pki.alice)),
                           ("x-client-cert", escaped_pem(pki.alice))])
    response = await sidecar.client.get("/", headers=headers)
    assert response.status == 401 and (await response.json())["reason"] == "cert_invalid"


async def test_the_ready_gauge_follows_readiness(sidecar: Running) -> None:
    for _ in range(100):
        if (await sidecar.admin.get("/readyz")).status == 200:
            break
        await asyncio.sleep(0.05)
    metrics = await (await sidecar.admin.get("/metrics")).text()
    assert "sidecar_ready 1.0" in metrics
    sidecar.sidecar.draining = True
    metrics = await (await sidecar.admin.get("/metrics")).text()
    assert "sidecar_ready 0.0" in metrics
