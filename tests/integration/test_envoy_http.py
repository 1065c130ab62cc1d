"""Envoy HTTP ext_authz, to the letter of Envoy's behaviour: the sidecar asked exactly as Envoy asks.

Envoy sends the original method to ``path_prefix`` + the original ``:path`` (query included),
with ``Content-Length: 0``, Host, Authorization and the ``allowed_headers`` (here XFCC) only; only
a 200 allows; headers we do not return keep the client's value, so every credential header is
returned; ``x-envoy-auth-headers-to-remove`` names the headers Envoy drops before the upstream.
The sidecar runs with deploy/envoy/sidecar-http.toml's sections.
"""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.dev.fakeidp import FakeIdp
from sidecar.dev.pki import Issued
from tests.conftest import MakeSidecar, Running
from tests.support import envoy_side
from tests.support.pki_fixtures import TestPki
from tests.support.scenarios import deploy_sections

CREDENTIALS = {f"x-credential-{s}" for s in ("sub", "client-id", "scope", "iss", "aud", "exp", "iat", "jti",
                                             "token-type", "username", "cnf-x5t-s256")}
SKIP = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


async def envoy_http(make_sidecar: MakeSidecar, **sections: dict[str, Any]) -> Running:
    merged = deploy_sections("http")
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    return await make_sidecar(**merged)


async def ask(running: Running, token: str | None, xfcc: str | None, method: str = "GET",
              path: str = "/ext_authz/api/items?page=2") -> Any:
    authorization = [f"Bearer {token}"] if token else []
    return await running.client.request(method, path, headers=envoy_side.http_check_headers(authorization, xfcc),
                                        skip_auto_headers=SKIP)


def alice_token(idp: FakeIdp, pki: TestPki, **claims: Any) -> str:
    return idp.mint("alice", cnf=pki.alice.x5t_s256, **claims)


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
@pytest.mark.parametrize("path", ["/ext_authz/", "/ext_authz/api/v1/items/42?x=1&y=%2F&z=",
                                  "/ext_authz//double//slash", "/ext_authz/%E2%82%AC?q=a+b#frag"])
async def test_any_method_on_any_path_under_the_prefix_is_checked(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, method: str, path: str
) -> None:
    running = await envoy_http(make_sidecar)
    response = await ask(running, alice_token(idp, pki), envoy_side.xfcc_element(pki.alice), method, path)
    assert response.status == 200 and response.headers["x-credential-sub"] == "alice"


async def test_a_connect_request_is_never_allowed(make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki) -> None:
    """aiohttp does not route CONNECT (authority-form target): the answer is a 404, which Envoy
    passes to the client as a denial. Fail closed."""
    running = await envoy_http(make_sidecar)
    response = await ask(running, alice_token(idp, pki), envoy_side.xfcc_element(pki.alice), "CONNECT")
    assert response.status != 200 and "x-credential-sub" not in response.headers


async def test_allow_returns_every_credential_header_even_empty_and_the_removal_list(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await envoy_http(make_sidecar, response={"claims": {"tenant": "tenant"}})
    response = await ask(running, alice_token(idp, pki), envoy_side.xfcc_element(pki.alice))
    names = {k.lower() for k in response.headers if k.lower().startswith("x-credential-")}
    assert names == CREDENTIALS | {"x-credential-tenant"}
    assert response.headers["x-credential-username"] == "" and response.headers["x-credential-tenant"] == ""
    assert response.headers["x-envoy-auth-headers-to-remove"] == "authorization, x-forwarded-client-cert, dpop"


async def test_no_removal_header_unless_configured(make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki) -> None:
    running = await envoy_http(make_sidecar, response={"remove_upstream_headers": []})
    response = await ask(running, alice_token(idp, pki), envoy_side.xfcc_element(pki.alice))
    assert response.status == 200 and "x-envoy-auth-headers-to-remove" not in response.headers


async def test_deny_carries_www_authenticate_and_a_json_body_and_no_credentials(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await envoy_http(make_sidecar)
    response = await ask(running, alice_token(idp, pki), envoy_side.xfcc_element(pki.bob), "POST")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == ('Bearer realm="api", error="invalid_token", '
                                                    'error_description="The access token is invalid"')
    assert response.headers["Content-Type"] == "application/json"
    assert await response.json() == {"error": "invalid_token", "reason": "cnf_mismatch"}
    assert not [k for k in response.headers if k.lower().startswith(("x-credential-", "x-envoy-"))]


def shapes(pki: TestPki) -> dict[str, tuple[str, dict[str, Any], int, str | None]]:
    """XFCC as Envoy and Istio send it → (header, client_cert overrides, status, reason)."""
    a, b, ca = pki.alice, pki.bob, pki.ca.root
    full = envoy_side.xfcc_element(a, by="spiffe://cluster.local/ns/api/sa/gateway", chain=[a, ca],
                                   subject='CN=alice,O="Example; Inc.",C=US', uri="spiffe://example/alice",
                                   dns="alice.example")
    istio = envoy_side.xfcc_element(a, by="spiffe://cluster.local/ns/api/sa/api", cert=False,
                                    subject="", uri="spiffe://cluster.local/ns/client/sa/alice")
    trust_hash = {"xfcc_trust_hash": True}
    return {
        "Hash and Cert (SANITIZE_SET, cert: true)": (envoy_side.xfcc_element(a), {}, 200, None),
        "Cert in the older Envoy URL encoding": (envoy_side.xfcc_element(a, legacy=True), {}, 200, None),
        "every key: By, Hash, Cert, Chain, quoted Subject, URI, DNS": (full, {}, 200, None),
        "Chain alone (chain: true): its first certificate is the leaf":
            (envoy_side.xfcc_element(a, hash_=False, cert=False, chain=[a, ca]), {}, 200, None),
        "lower-case keys": (envoy_side.xfcc_element(a).replace("Hash=", "hash=").replace("Cert=", "cert="), {}, 200,
                            None),
        "several elements: the last one (Envoy's) is used":
            (envoy_side.xfcc_element(b) + "," + envoy_side.xfcc_element(a), {}, 200, None),
        "several elements: an earlier matching one does not help":
            (envoy_side.xfcc_element(a) + "," + envoy_side.xfcc_element(b), {}, 401, "cnf_mismatch"),
        "Hash only, as Istio sends by default, with xfcc_trust_hash": (istio, trust_hash, 200, None),
        "Hash only without xfcc_trust_hash": (istio, {}, 401, "cert_invalid"),
        "Cert decides when Hash names another certificate": (
            envoy_side.xfcc_element(b).replace(envoy_side.sha256_hex(b), envoy_side.sha256_hex(a)),
            trust_hash, 401, "cnf_mismatch"),
        "Hash only of another certificate, trusted": (
            envoy_side.xfcc_element(b, cert=False), trust_hash, 401, "cnf_mismatch"),
        "an unterminated quote": ('Hash=ab;Cert="-----BEGIN', {}, 401, "cert_invalid"),
    }


SHAPE_NAMES = [
    "Hash and Cert (SANITIZE_SET, cert: true)", "Cert in the older Envoy URL encoding",
    "every key: By, Hash, Cert, Chain, quoted Subject, URI, DNS",
    "Chain alone (chain: true): its first certificate is the leaf", "lower-case keys",
    "several elements: the last one (Envoy's) is used", "several elements: an earlier matching one does not help",
    "Hash only, as Istio sends by default, with xfcc_trust_hash", "Hash only without xfcc_trust_hash",
    "Cert decides when Hash names another certificate", "Hash only of another certificate, trusted",
    "an unterminated quote",
]


@pytest.mark.parametrize("shape", SHAPE_NAMES)
async def test_xfcc_in_its_real_shapes(make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, shape: str) -> None:
    table = shapes(pki)
    assert list(table) == SHAPE_NAMES
    xfcc, overrides, status, reason = table[shape]
    running = await envoy_http(make_sidecar, client_cert=overrides)
    response = await ask(running, alice_token(idp, pki), xfcc)
    assert response.status == status
    if reason:
        assert (await response.json())["reason"] == reason


async def test_an_xfcc_with_a_chain_above_8kb_is_read(make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki) -> None:
    running = await envoy_http(make_sidecar)
    chain: list[Issued] = [pki.alice] + [pki.bob] * 12 + [pki.ca.root]
    xfcc = envoy_side.xfcc_element(pki.alice, chain=chain, subject="CN=alice")
    assert len(xfcc) > 8190
    assert (await ask(running, alice_token(idp, pki), xfcc)).status == 200


async def test_xfcc_from_a_peer_outside_trusted_proxies_is_ignored(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    # Without routing.origins (the shipped file declares one, which an untrusted peer cannot vouch for).
    running = await envoy_http(make_sidecar, client_cert={"trusted_proxies": ["10.0.0.0/8"]}, routing={"origins": []})
    response = await ask(running, alice_token(idp, pki), envoy_side.xfcc_element(pki.alice))
    assert response.status == 401 and (await response.json())["reason"] == "cert_missing"


async def test_a_certificate_in_another_header_than_the_configured_one_is_ignored(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await envoy_http(make_sidecar)
    headers = envoy_side.http_check_headers([f"Bearer {alice_token(idp, pki)}"])
    headers.append(("x-client-cert", envoy_side.url_encode_pem(pki.alice.cert_pem)))
    response = await running.client.get("/ext_authz/", headers=headers, skip_auto_headers=SKIP)
    assert response.status == 401 and (await response.json())["reason"] == "cert_missing"


async def test_client_copies_of_names_the_answer_does_not_set_join_the_removal_list(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    """Envoy overwrites the names the answer sets and removes the listed ones after that: a name
    the answer sets must not be listed (its value would go), every other one must."""
    running = await envoy_http(make_sidecar)
    forged = [("X-Credential-Sub", "mallory"), ("X-Credential-Tenant", "acme"), ("x_credential_role", "admin"),
              ("x-credential-tenant", "again")]
    headers = envoy_side.http_check_headers([f"Bearer {alice_token(idp, pki)}"], envoy_side.xfcc_element(pki.alice))
    response = await running.client.get("/ext_authz/api", headers=headers + forged, skip_auto_headers=SKIP)
    assert response.status == 200 and response.headers["x-credential-sub"] == "alice"
    assert response.headers.getall("x-envoy-auth-headers-to-remove") == [
        "authorization, x-forwarded-client-cert, dpop, x-credential-tenant, x_credential_role"]
    clean = await ask(running, alice_token(idp, pki), envoy_side.xfcc_element(pki.alice))
    assert clean.headers["x-envoy-auth-headers-to-remove"] == "authorization, x-forwarded-client-cert, dpop"


async def test_with_no_configured_removals_the_list_holds_the_client_copies_only(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await envoy_http(make_sidecar, response={"remove_upstream_headers": []})
    headers = envoy_side.http_check_headers([f"Bearer {alice_token(idp, pki)}"], envoy_side.xfcc_element(pki.alice))
    response = await running.client.get("/ext_authz/api", headers=[*headers, ("X-Credential-Tenant", "acme")],
                                        skip_auto_headers=SKIP)
    assert response.status == 200 and response.headers["x-envoy-auth-headers-to-remove"] == "x-credential-tenant"


async def test_forged_headers_deny_refuses_any_client_copy_before_asking_the_idp(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await envoy_http(make_sidecar, response={"forged_headers": "deny"})
    headers = envoy_side.http_check_headers([f"Bearer {alice_token(idp, pki)}"], envoy_side.xfcc_element(pki.alice))
    for name in ("X-Credential-Sub", "x-credential-tenant", "X_Credential_Role"):
        response = await running.client.get("/ext_authz/api", headers=[*headers, (name, "x")], skip_auto_headers=SKIP)
        assert response.status == 400 and 'error="invalid_request"' in response.headers["WWW-Authenticate"]
        assert (await response.json())["reason"] == "credential_header_forged"
    assert idp.introspect_requests == 0
    assert (await ask(running, alice_token(idp, pki), envoy_side.xfcc_element(pki.alice))).status == 200
