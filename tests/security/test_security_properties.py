"""Security properties of the whole sidecar, as tests (real HTTP front, fake IdP over real mTLS).

- No token, client secret, key password or private-key material in any log record, formatted
  log line, response body or response header, across every deny path and IdP failure
  (extends tests/integration/test_check.py, which covers the token on three paths).
- Thumbprints are compared in constant time (``hmac.compare_digest``), never with ``==``.
- A certificate header from an untrusted peer is ignored: not parsed, not honoured, whatever
  forwarding headers claim.
- A cached verdict is never reused under another policy or another issuer.
- Claims holding CR, LF or NUL never split a header in the bytes of a real HTTP response.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization

from sidecar.config import ConfigError, from_mapping
from sidecar.core import binding, client_cert
from sidecar.core.errors import InvalidToken
from sidecar.core.token_info import TokenInfo
from sidecar.dev.devidp import server_context
from sidecar.dev.fakeidp import FakeIdp, Fault, standard_idp
from sidecar.idp.tls import TlsConfigError, client_context
from sidecar.runtime import Sidecar
from sidecar.support.logs import JsonFormatter
from tests.conftest import MakeSidecar, Running, escaped_pem, sidecar_config
from tests.security.conftest import BASIC, CLIENT_SECRET, SecretAwareIdp
from tests.support.check_server import CheckTestServer
from tests.support.pki_fixtures import TestPki

KEY_PASSWORD = "kp-93c1-never-log-me"


def _encrypted_key(pki: TestPki, directory: Path) -> Path:
    """The sidecar's key, encrypted with KEY_PASSWORD (so idp.key_password is in play)."""
    path = directory / "sidecar-encrypted.key"
    path.write_bytes(pki.sidecar.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(KEY_PASSWORD.encode()),
    ))
    return path


def _key_fragments(pki: TestPki, encrypted: Path) -> list[str]:
    """Every base64 line of every private key in play, and their raw bytes in hex."""
    lines: list[str] = []
    for pem in (pki.sidecar.key_pem, pki.alice.key_pem, pki.bob.key_pem, pki.idp.key_pem, encrypted.read_bytes()):
        lines += [line for line in pem.decode().splitlines() if line and not line.startswith("-----")]
    scalar = pki.sidecar.key.private_numbers().private_value
    return [*lines, format(scalar, "x"), str(scalar)]


def _scan(haystacks: list[str], secrets: dict[str, str]) -> list[str]:
    return [f"{name} found" for name, secret in secrets.items() for h in haystacks if secret and secret in h]


async def _walk_every_deny_path(running: Running, idp: FakeIdp, pki: TestPki) -> tuple[list[str], list[str]]:
    """Drive every reason code the sidecar has; the tokens used and what was sent back."""
    tokens: list[str] = []
    answers: list[str] = []

    def mint(client: str = "alice", cnf: str | None = pki.alice.x5t_s256, **claims: Any) -> str:
        claims.setdefault("aud", "api")
        token = idp.mint(client, cnf=cnf, **claims)
        tokens.append(token)
        return token

    async def send(token: str | None, cert: Any = None, **headers: str) -> int:
        response = await running.check(token, cert, **headers)
        body = await response.read()
        answers.append(body.decode(errors="replace") + repr(dict(response.headers)))
        return response.status

    expired = mint(lifetime=1)
    idp.tokens[expired]["exp"] = int(time.time()) - 100
    expired_but_active = json.dumps(idp.tokens[expired]).encode()
    future = mint(nbf=int(time.time()) + 3600)
    statuses = [
        await send(mint(scope="read write"), pki.alice),  # allow
        await send(None),  # token_missing
        await send(None, None, Authorization=f"Basic {base64.b64encode(CLIENT_SECRET.encode()).decode()}"),
        await send(mint() + " extra", pki.alice),  # token_malformed
        await send(mint(), pki.bob),  # cnf_mismatch
        await send(mint(), None),  # cert_missing
        await send(mint(), None, **{"x-client-cert": "%ZZ" + mint()}),  # cert_invalid
        await send(mint("carol", cnf=None), pki.alice),  # token_unbound
        await send(mint(iss="https://evil.example"), pki.alice),  # issuer_not_allowed
        await send(mint(aud="billing"), pki.alice),  # audience_mismatch
        await send(mint(scope="write"), pki.alice),  # scope_missing
        await send(future, pki.alice),  # token_not_yet_valid
        await send("unknown-" + mint(), pki.alice),  # token_inactive
    ]
    idp.fault = Fault(body=expired_but_active)
    statuses.append(await send(expired, pki.alice))  # token_expired
    for fault in (Fault(status=500), Fault(status=401, body=b'{"error":"invalid_client"}'), Fault(body=b"<html>"),
                  Fault(body=b'{"active": "yes"}'), Fault(body=b'{"active": true, "exp": Infinity}'),
                  Fault(delay=0.6), Fault(drop=True)):
        idp.fault = fault
        statuses.append(await send(mint(), pki.alice))  # idp_unavailable, each kind
    idp.fault = None
    await idp.server.close()  # type: ignore[attr-defined]
    statuses.append(await send(mint(), pki.alice))  # idp_unavailable: connection refused
    assert statuses[0] == 200 and set(statuses[1:]) <= {400, 401, 403, 503}, str(statuses)
    return tokens, answers


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post", "tls_client_auth"])
async def test_no_token_secret_password_or_key_material_leaks_on_any_deny_path_or_idp_failure(
    make_sidecar: MakeSidecar, idp: SecretAwareIdp, pki: TestPki, tmp_path: Path,
    captured_logs: pytest.LogCaptureFixture, auth_method: str,
) -> None:
    encrypted = _encrypted_key(pki, tmp_path)
    running = await make_sidecar(
        idp={"auth_method": auth_method, "client_secret": CLIENT_SECRET, "key_file": str(encrypted),
             "key_password": KEY_PASSWORD, "timeout": 0.5},
        policy={"allowed_issuers": [idp.issuer], "audiences": ["api"], "required_scopes": ["read"]},
    )
    tokens, answers = await _walk_every_deny_path(running, idp, pki)
    if auth_method == "client_secret_basic":
        assert idp.basic_calls > 0  # the secret really was in play
    metrics = await (await running.admin.get("/metrics")).text()
    records = captured_logs.records
    formatter = JsonFormatter()
    haystacks = [*answers, metrics, *(r.getMessage() + repr(r.__dict__) for r in records),
                 *(formatter.format(r) for r in records)]
    reasons = {getattr(r, "reason", None) for r in records}
    assert {"token_missing", "token_malformed", "cnf_mismatch", "cert_missing", "cert_invalid", "token_unbound",
            "issuer_not_allowed", "audience_mismatch", "scope_missing", "token_inactive", "token_expired",
            "token_not_yet_valid", "idp_unavailable"} <= reasons
    secrets = {f"token {i}": t for i, t in enumerate(tokens)}
    secrets |= {"client secret": CLIENT_SECRET, "Basic credentials": BASIC.split()[1], "key password": KEY_PASSWORD}
    secrets |= {f"key fragment {i}": k for i, k in enumerate(_key_fragments(pki, encrypted))}
    assert _scan(haystacks, secrets) == []


def test_the_configuration_repr_and_its_errors_never_show_a_secret(pki: TestPki, tmp_path: Path) -> None:
    config = from_mapping({"idp": {"issuer": "https://idp.example", "client_id": "c", "auth_method":
                                   "client_secret_basic", "client_secret": CLIENT_SECRET,
                                   "key_password": KEY_PASSWORD}})
    assert CLIENT_SECRET not in repr(config) and KEY_PASSWORD not in repr(config)
    for key, value in (("client_secret", [CLIENT_SECRET]), ("key_password", {"p": KEY_PASSWORD})):
        with pytest.raises(ConfigError) as error:
            from_mapping({"idp": {key: value}})
        assert CLIENT_SECRET not in str(error.value) and KEY_PASSWORD not in str(error.value)
    encrypted = str(_encrypted_key(pki, tmp_path))
    wrong = from_mapping({"idp": {"cert_file": str(pki.sidecar_files[0]), "key_file": encrypted,
                                  "key_password": "wrong-" + KEY_PASSWORD}}).idp
    with pytest.raises(TlsConfigError) as tls_error:
        client_context(wrong)
    assert KEY_PASSWORD not in str(tls_error.value)


# --- constant-time thumbprint comparison ---------------------------------------------------------

async def test_every_binding_check_goes_through_hmac_compare_digest(
    sidecar: Running, idp: FakeIdp, pki: TestPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(binding.hmac, "compare_digest", spy)
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    assert (await sidecar.check(token, pki.alice)).status == 200
    assert (await sidecar.check(token, pki.bob)).status == 401
    assert (await sidecar.check(token, pki.alice)).status == 200  # a cache hit compares too
    expected = pki.alice.x5t_s256.encode()
    mismatch = (expected, pki.bob.x5t_s256.encode())
    # One decision path: the mismatch (a cache hit) is compared once, by the same code as the miss.
    assert calls == [(expected, expected), mismatch, (expected, expected)]
    assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in calls)


class _NoEquality(str):
    """A thumbprint that fails the test if anything compares it with == or !=."""

    __hash__ = str.__hash__

    def __eq__(self, other: object) -> bool:
        raise AssertionError("thumbprint compared with ==")

    def __ne__(self, other: object) -> bool:
        raise AssertionError("thumbprint compared with !=")


@pytest.mark.parametrize("presented", ["A" * 43, "B" * 43, "A" * 42 + "B"])
def test_the_binding_never_compares_thumbprints_with_equality(presented: str) -> None:
    info = TokenInfo(active=True, cnf_x5t_s256=_NoEquality("A" * 43))
    if presented == "A" * 43:
        binding.check_binding(info, _NoEquality(presented), "strict")
    else:
        with pytest.raises(InvalidToken):
            binding.check_binding(info, _NoEquality(presented), "strict")


# --- untrusted peers ----------------------------------------------------------------------------

async def test_a_certificate_header_from_an_untrusted_peer_is_never_parsed_whatever_it_claims(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = await make_sidecar(client_cert={"trusted_proxies": ["10.0.0.0/8", "::ffff:10.0.0.0/104"],
                                              "xfcc_trust_hash": True})
    parsed: list[str] = []
    monkeypatch.setattr(client_cert.CertificateReader, "_compute", lambda self, value: parsed.append(value) or "x")
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    xfcc_hash = "By=spiffe://a;Hash=" + base64.urlsafe_b64decode(pki.alice.x5t_s256 + "=").hex()
    for cert_value in (escaped_pem(pki.alice), xfcc_hash):
        response = await running.check(token, None, **{
            "x-client-cert": cert_value, "X-Forwarded-For": "10.0.0.1", "X-Real-IP": "10.0.0.1",
            "Forwarded": "for=10.0.0.1", "X-Forwarded-Client-Cert": cert_value,
        })
        assert response.status == 401 and (await response.json())["reason"] == "cert_missing"
    assert parsed == []


async def test_the_same_certificate_header_is_honoured_from_a_trusted_peer(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    # The control for the test above: the only difference is the trusted range.
    running = await make_sidecar(client_cert={"trusted_proxies": ["127.0.0.0/8"]})
    assert (await running.check(idp.mint("alice", cnf=pki.alice.x5t_s256), pki.alice)).status == 200


# --- no cached verdict across policies or issuers --------------------------------------------------

async def test_one_token_under_two_policies_gets_each_policys_answer_in_either_order(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    lax = await make_sidecar()
    strict = await make_sidecar(policy={"required_scopes": ["write"], "audiences": ["billing"]})
    for first, second in ((lax, strict), (strict, lax)):
        token = idp.mint("alice", cnf=pki.alice.x5t_s256, scope="read", aud="api")
        calls = idp.introspect_requests
        for _ in range(2):  # the second round is served from each sidecar's own cache
            a = await first.check(token, pki.alice)
            b = await second.check(token, pki.alice)
            results = {id(first): a, id(second): b}
            assert results[id(lax)].status == 200
            assert results[id(strict)].status == 401
            assert (await results[id(strict)].json())["reason"] == "audience_mismatch"
        assert idp.introspect_requests == calls + 2  # one call per sidecar, none shared
    assert lax.sidecar.decider.cache.key("t") != strict.sidecar.decider.cache.key("t")


async def _sidecar_for(stack: contextlib.AsyncExitStack, fake: FakeIdp, pki: TestPki,
                       **sections: dict[str, Any]) -> TestClient[Any, Any]:
    sidecar = await stack.enter_async_context(Sidecar.running(sidecar_config(pki, fake, **sections)))
    return await stack.enter_async_context(TestClient(CheckTestServer(sidecar)))


async def test_a_token_valid_at_one_issuer_is_never_accepted_for_another(
    idp: FakeIdp, pki: TestPki, aiohttp_server: Any
) -> None:
    other = standard_idp()
    server = await aiohttp_server(other.app(), ssl=server_context(*pki.idp_files, pki.ca_file))
    other.issuer = f"https://127.0.0.1:{server.port}"
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    # The other IdP knows the same token string, as another client's and with its own issuer.
    other.tokens[token] = {**idp.tokens[token], "iss": other.issuer, "cnf": {"x5t#S256": pki.bob.x5t_s256}}
    async with contextlib.AsyncExitStack() as stack:
        first = await _sidecar_for(stack, idp, pki, policy={"allowed_issuers": [idp.issuer]})
        second = await _sidecar_for(stack, other, pki, policy={"allowed_issuers": [other.issuer]})
        pinned_wrong = await _sidecar_for(stack, other, pki, policy={"allowed_issuers": [idp.issuer]})
        headers = {"Authorization": f"Bearer {token}", "x-client-cert": escaped_pem(pki.alice)}
        for _ in range(2):
            assert (await first.get("/", headers=headers)).status == 200
            denied = await second.get("/", headers=headers)
            assert denied.status == 401 and (await denied.json())["reason"] == "cnf_mismatch"
            bob = await pinned_wrong.get("/", headers={**headers, "x-client-cert": escaped_pem(pki.bob)})
            assert bob.status == 401 and (await bob.json())["reason"] == "issuer_not_allowed"


# --- header splitting ---------------------------------------------------------------------------

async def _raw_get(running: Running, request: bytes) -> bytes:
    server = running.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)  # Connection: close: read to the end
    writer.close()
    return data


INJECTIONS = ["alice\r\nSet-Cookie: session=stolen", "alice\nX-Injected: 1", "alice\rX-Injected: 1",
              "alice\x00X-Injected: 1", "alice\r\n\r\nHTTP/1.1 200 OK", "alice\u2028X-Injected: 1",
              "alice\x85X-Injected: 1", "alice\ud800\r\nX-Injected: 1"]


@pytest.mark.parametrize("evil", INJECTIONS, ids=[repr(i) for i in INJECTIONS])
async def test_claims_with_cr_lf_or_nul_never_split_a_header_in_the_response_bytes(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, evil: str
) -> None:
    running = await make_sidecar(response={"claims": {"tenant": "tenant", "groups": "groups"}})
    token = idp.mint("alice", cnf=pki.alice.x5t_s256, sub=evil, username=evil, tenant=evil, groups=[evil, evil],
                     jti=evil, scope="read " + evil.replace(" ", "_"))
    idp.fault = Fault(body=json.dumps(idp.tokens[token]).encode())  # json escapes the lone surrogate for us
    data = await _raw_get(running, b"GET /check HTTP/1.1\r\nHost: s\r\nConnection: close\r\nAuthorization: Bearer "
                          + token.encode() + b"\r\nX-Client-Cert: " + escaped_pem(pki.alice).encode() + b"\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and body == b""
    lines = head.split(b"\r\n")[1:]
    assert not re.search(rb"[\r\n\x00]", b"".join(lines))  # no bare CR, LF or NUL inside any line
    names = [line.split(b":", 1)[0].lower() for line in lines]
    assert all(re.fullmatch(rb"[a-z0-9-]+", n) for n in names)
    assert not {b"set-cookie", b"x-injected", b"http/1.1 200 ok"} & set(names)
    assert names.count(b"x-credential-sub") == 1
    headers = {name: value.strip() for name, _, value in (line.partition(b":") for line in lines)}
    for name in (b"x-credential-sub", b"x-credential-username", b"x-credential-tenant", b"x-credential-jti"):
        assert headers[name].startswith(b"alice")


async def test_a_deny_challenge_never_carries_request_input(make_sidecar: MakeSidecar, pki: TestPki) -> None:
    running = await make_sidecar()
    evil = quote("\r\nSet-Cookie: a=b")
    data = await _raw_get(running, b"GET /" + evil.encode() + b" HTTP/1.1\r\nHost: s\r\nConnection: close\r\n"
                          b"Authorization: Bearer a\"b\r\n\r\n")
    head = data.partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 400 ") and b"set-cookie" not in head.lower() and b'a"b' not in data
