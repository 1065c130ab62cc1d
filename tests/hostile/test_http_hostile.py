"""Hostile requests through the real HTTP front (fake IdP over real mutual TLS).

Whatever arrives in ``Authorization`` and the certificate header — oversized, repeated,
duplicated, non-ASCII, NUL, CR/LF, bad base64 or percent-encoding, not X.509, a chain where a
leaf belongs — the answer is a 4xx or a clean deny: never an allow, never a 5xx from an exception
(503 only when the IdP cannot answer).
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.client_cert import CertificateReader
from sidecar.core.extract import bearer_token
from sidecar.dev.fakeidp import FakeIdp, Fault
from tests.conftest import Running, escaped_pem
from tests.hostile.material import certificates, header_values
from tests.support.pki_fixtures import TestPki

DENY_STATUSES = {400, 401, 403}


async def _assert_clean_deny(response: Any, *, idp_may_fail: bool = False) -> dict[str, Any]:
    body = await response.read()
    allowed = DENY_STATUSES | ({503} if idp_may_fail else set())
    assert response.status in allowed, (response.status, body[:200])
    assert "x-credential-sub" not in response.headers
    if body and response.content_type == "application/json":
        decoded: dict[str, Any] = json.loads(body)
        assert decoded.get("reason") != "internal_error"
        return decoded
    return {}


async def raw_request(running: Running, head: bytes) -> tuple[int, bytes]:
    """Send raw bytes (what no well-behaved client library would send); the status and response."""
    server = running.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(head)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(65536), 5)
        while data and b"\r\n\r\n" not in data:
            more = await asyncio.wait_for(reader.read(65536), 5)
            if not more:
                break
            data += more
    finally:
        writer.close()
    status_line = data.split(b"\r\n", 1)[0]
    return int(status_line.split(b" ")[1]), data


def alice_token(idp: FakeIdp, pki: TestPki) -> str:
    return idp.mint("alice", cnf=pki.alice.x5t_s256)


# --- oversized and many -------------------------------------------------------------------------

async def test_an_authorization_header_beyond_the_field_limit_is_a_400_from_the_parser(sidecar: Running) -> None:
    response = await sidecar.client.get("/", headers={"Authorization": "Bearer " + "a" * 70_000})
    assert response.status == 400


async def test_a_token_longer_than_the_token_limit_but_within_the_field_limit_is_malformed(sidecar: Running) -> None:
    response = await sidecar.client.get("/", headers={"Authorization": "Bearer " + "a" * 20_000})
    assert (await _assert_clean_deny(response))["reason"] == "token_malformed"


async def test_a_certificate_header_beyond_the_field_limit_is_a_400_from_the_parser(
    sidecar: Running, idp: FakeIdp, pki: TestPki
) -> None:
    response = await sidecar.client.get("/", headers={"Authorization": f"Bearer {alice_token(idp, pki)}",
                                                      "x-client-cert": escaped_pem(pki.alice) * 150})
    assert len(escaped_pem(pki.alice) * 150) > 65536 and response.status == 400


async def test_more_headers_than_the_parser_takes_is_a_400_from_the_parser(sidecar: Running) -> None:
    response = await sidecar.client.get("/", headers=[(f"x-noise-{i}", "v" * 20) for i in range(1000)])
    assert response.status == 400


async def test_a_hundred_authorization_headers_are_a_clean_deny(sidecar: Running, idp: FakeIdp, pki: TestPki) -> None:
    token = alice_token(idp, pki)
    headers = [("Authorization", f"Bearer {token}")] * 100 + [("x-client-cert", escaped_pem(pki.alice))]
    response = await sidecar.client.get("/", headers=headers)
    assert (await _assert_clean_deny(response))["reason"] == "token_duplicated"


# --- duplicates -----------------------------------------------------------------------------------

async def test_two_authorization_headers_are_refused_even_when_both_are_the_valid_token(
    sidecar: Running, idp: FakeIdp, pki: TestPki
) -> None:
    token = alice_token(idp, pki)
    # A list, not a dict: aiohttp's client keeps only one Authorization from a mapping.
    headers = [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}"),
               ("x-client-cert", escaped_pem(pki.alice))]
    response = await sidecar.client.get("/", headers=headers)
    assert (await _assert_clean_deny(response))["reason"] == "token_duplicated"


@pytest.mark.parametrize("order", ["right first", "wrong first", "both right"])
async def test_two_certificate_headers_are_refused_whichever_comes_first(
    sidecar: Running, idp: FakeIdp, pki: TestPki, order: str
) -> None:
    right, wrong = escaped_pem(pki.alice), escaped_pem(pki.bob)
    pair = {"right first": (right, wrong), "wrong first": (wrong, right), "both right": (right, right)}[order]
    headers = [("Authorization", f"Bearer {alice_token(idp, pki)}"), *(("x-client-cert", v) for v in pair)]
    response = await sidecar.client.get("/", headers=headers)
    assert (await _assert_clean_deny(response))["reason"] == "cert_invalid"


# --- encodings ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    "Bearer tökén", "Bearer abc\u2028def", "Bearer \U0001d51e\U0001d51f", "Bearer abc%00def", "Bearer abc%0d%0aX: y",
    "Bearer ===", "Bearer a=b", "Bearer " + "=" * 10, "Bearer\u00a0abc", "Bearer a\tb",
])
async def test_non_ascii_and_non_b64token_authorization_is_a_clean_deny(
    sidecar: Running, pki: TestPki, value: str
) -> None:
    response = await sidecar.client.get("/", headers={"Authorization": value,
                                                      "x-client-cert": escaped_pem(pki.alice)})
    await _assert_clean_deny(response)


BAD_CERTIFICATES = (
    "invalid percent-encoding", "percent-encoded invalid utf-8", "percent-encoded NUL", "invalid base64 in the PEM",
    "base64 with a bit flipped", "not X.509", "a private key instead", "DER of two certificates",
"truncated", "XFCC with an unterminated quote", "XFCC hash only (not trusted)",
    "non-ASCII", "empty-looking", "X.509 version 28",
)


def _bad_certificates(pki: TestPki) -> dict[str, str]:
    good = escaped_pem(pki.alice)
    return {
        "invalid percent-encoding": good.replace("%0A", "%ZZ", 2),
        "percent-encoded invalid utf-8": "%ff%fe" + good,
        "percent-encoded NUL": good.replace("%0A", "%00"),
        "invalid base64 in the PEM": good.replace("M", "!", 3),
        "base64 with a bit flipped": quote(pki.alice.cert_pem.decode().replace("MII", "MIJ", 1), safe=""),
        "not X.509": quote("-----BEGIN CERTIFICATE-----\n" + base64.b64encode(b"\x30\x03\x02\x01\x01").decode()
                           + "\n-----END CERTIFICATE-----\n", safe=""),
        "a private key instead": quote("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----",
                                       safe=""),
        "DER of two certificates": base64.b64encode(pki.alice.der + pki.bob.der).decode(),
        "truncated": good[: len(good) // 2],
        "XFCC with an unterminated quote": f'Cert="{good}',
        "XFCC hash only (not trusted)": "By=spiffe://a;Hash=" + "ab" * 32,
        "non-ASCII": "é" * 100,
        "empty-looking": "   ",
        "X.509 version 28": base64.b64encode(pki.alice.der.replace(bytes.fromhex("a003020102"),
                                                                   bytes.fromhex("a00302011c"), 1)).decode(),
    }


@pytest.mark.parametrize("name", BAD_CERTIFICATES)
async def test_a_malformed_certificate_header_is_a_clean_cert_invalid_deny(
    sidecar: Running, idp: FakeIdp, pki: TestPki, name: str
) -> None:
    value = _bad_certificates(pki)[name]
    response = await sidecar.client.get("/", headers={"Authorization": f"Bearer {alice_token(idp, pki)}",
                                                      "x-client-cert": value})
    # A header of only white space carries no certificate: the token is bound, so cert_missing.
    expected = "cert_missing" if name == "empty-looking" else "cert_invalid"
    assert (await _assert_clean_deny(response))["reason"] == expected


async def test_a_chain_in_one_header_is_refused_under_auto_even_if_the_bound_cert_follows(
    sidecar: Running, idp: FakeIdp, pki: TestPki
) -> None:
    """Under ``client_cert.format = auto`` a value with several certificates is refused: a proxy
    that appends would have put client-written ones first (the explicit formats read the leaf)."""
    response = await sidecar.check(alice_token(idp, pki), None,
                                   **{"x-client-cert": escaped_pem(pki.bob) + escaped_pem(pki.alice)})
    assert (await _assert_clean_deny(response))["reason"] == "cert_invalid"
    ca_first = quote(pki.ca.root.cert_pem.decode(), safe="") + escaped_pem(pki.alice)
    response = await sidecar.check(alice_token(idp, pki), None, **{"x-client-cert": ca_first})
    assert (await _assert_clean_deny(response))["reason"] == "cert_invalid"


# --- raw bytes: NUL, CR/LF, obs-fold, invalid UTF-8 --------------------------------------------

RAW_HEADERS = {
    "NUL in Authorization": b"Authorization: Bearer abc\x00def\r\n",
    "bare CR in Authorization": b"Authorization: Bearer abc\rX-Injected: 1\r\n",
    "bare LF in Authorization": b"Authorization: Bearer abc\nX-Injected: 1\r\n",
    "obs-fold continuation": b"Authorization: Bearer abc\r\n def\r\n",
    "invalid UTF-8 in Authorization": b"Authorization: Bearer \xff\xfe\xc3\x28\r\n",
    "NUL in the certificate header": b"X-Client-Cert: -----BEGIN\x00CERTIFICATE-----\r\n",
    "invalid UTF-8 in the certificate header": b"X-Client-Cert: \xff\xfe%ZZ\r\n",
    "space before the colon": b"Authorization : Bearer abc\r\n",
    "header name with a NUL": b"Author\x00ization: Bearer abc\r\n",
    "empty header name": b": Bearer abc\r\n",
    "a second Authorization in lower case": b"Authorization: Bearer abc\r\nauthorization: Bearer abc\r\n",
    "a second certificate header in lower case": b"Authorization: Bearer abc\r\nx-client-cert: CERT\r\n",
}


@pytest.mark.parametrize("extra", RAW_HEADERS.values(), ids=RAW_HEADERS.keys())
async def test_raw_control_bytes_and_invalid_utf8_in_headers_are_a_4xx(
    sidecar: Running, idp: FakeIdp, pki: TestPki, extra: bytes
) -> None:
    token = alice_token(idp, pki).encode()
    head = (b"GET /check HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n"
            + extra.replace(b"Bearer abc", b"Bearer " + token).replace(b"CERT", escaped_pem(pki.alice).encode())
            + b"X-Client-Cert: " + escaped_pem(pki.alice).encode() + b"\r\n\r\n")
    status, data = await raw_request(sidecar, head)
    assert 400 <= status < 500, data[:300]
    assert b"x-credential-sub" not in data.lower()


async def test_a_deeply_nested_introspection_answer_is_idp_unavailable_not_an_internal_error(
    sidecar: Running, idp: FakeIdp, pki: TestPki
) -> None:
    # Found by the hostile-input work: json.loads raised RecursionError, which escaped as a bug.
    idp.fault = Fault(body=b"[" * 100_000)
    response = await sidecar.check(alice_token(idp, pki), pki.alice)
    assert response.status == 503 and (await response.json())["reason"] == "idp_unavailable"


@pytest.mark.parametrize("body", [b'{"active": true, "exp": Infinity}', b'{"active": true, "exp": NaN}',
                                  b'{"active": true, "exp": 1' + b"0" * 400 + b"}"])
async def test_an_unusable_exp_from_the_idp_is_idp_unavailable_not_an_internal_error(
    sidecar: Running, idp: FakeIdp, pki: TestPki, body: bytes
) -> None:
    idp.fault = Fault(body=body)
    response = await sidecar.check(alice_token(idp, pki), pki.alice)
    assert response.status == 503 and (await response.json())["reason"] == "idp_unavailable"


async def test_a_lone_surrogate_in_a_claim_is_an_allow_with_a_clean_header_not_a_500(
    sidecar: Running, idp: FakeIdp, pki: TestPki
) -> None:
    token = alice_token(idp, pki)
    record = dict(idp.tokens[token])
    body = json.dumps(record).replace('"sub": "alice"', '"sub": "ali\\ud800ce"').encode()
    idp.fault = Fault(body=body)
    response = await sidecar.check(token, pki.alice)
    assert response.status == 200 and response.headers["x-credential-sub"] == "alice"


# --- generated: any Authorization and certificate values ---------------------------------------

_VECTOR_TOKENS: dict[int, tuple[FakeIdp, str]] = {}
header_text = st.text(st.one_of(st.just("\t"), st.characters(blacklist_categories=("Cs", "Cc"))), max_size=120)


@st.composite
def hostile_request(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    certs = certificates()
    valid_cert = draw(st.sampled_from(list(header_values(certs[0]).values())))
    authorization = draw(st.lists(st.one_of(
        header_text, st.just("Bearer {token}"), header_text.map(lambda t: "Bearer {token}" + t),
        header_text.map(lambda t: "Bearer " + t),
    ), max_size=3))
    certificate = draw(st.lists(st.one_of(
        header_text, st.just(valid_cert), header_text.map(lambda t: valid_cert[: len(t)] + t),
    ), max_size=2))
    return authorization, certificate


@given(hostile_request())
async def test_generated_authorization_and_certificate_headers_allow_only_what_the_oracle_allows(
    sidecar: Running, idp: FakeIdp, pki: TestPki, request_values: tuple[list[str], list[str]]
) -> None:
    authorization, certificate = request_values
    vector = certificates()[0]
    known = _VECTOR_TOKENS.get(id(idp))
    if known is None or known[0] is not idp:
        known = _VECTOR_TOKENS[id(idp)] = (idp, idp.mint("alice", cnf=vector.x5t))
    token = known[1]
    sent = [a.replace("{token}", token) for a in authorization]
    headers = [("Authorization", a) for a in sent] + [("x-client-cert", c) for c in certificate]
    response = await sidecar.client.get("/", headers=headers)
    if response.status == 200:
        # The oracle: exactly one Authorization with the bound token, exactly one certificate
        # header that reads as the bound certificate.
        assert bearer_token(sent) == token
        assert len(certificate) == 1
        assert CertificateReader("auto").thumbprint(certificate[0]) == vector.x5t
    else:
        await _assert_clean_deny(response)


@pytest.mark.parametrize("path", [b"/api/%0A", b"/%0D%0Ax", b"/a%00b", b"/%E2%80%A8"])
async def test_a_path_with_an_encoded_line_break_or_nul_is_a_check_not_a_404(
    sidecar: Running, idp: FakeIdp, pki: TestPki, path: bytes
) -> None:
    # Found here: the check route was "/{tail:.*}" and "." does not match a newline, so Envoy
    # (which appends the original path) got a 404 for such a path instead of a decision.
    head = (b"GET " + path + b" HTTP/1.1\r\nHost: s\r\nConnection: close\r\nAuthorization: Bearer "
            + alice_token(idp, pki).encode() + b"\r\nX-Client-Cert: " + escaped_pem(pki.alice).encode() + b"\r\n\r\n")
    status, _ = await raw_request(sidecar, head)
    assert status == 200
