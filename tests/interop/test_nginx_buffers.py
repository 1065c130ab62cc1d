"""nginx's buffers for the sidecar's answer fit the largest answer the sidecar can send (issue 11,
item 14): with its default one-page ``proxy_buffer_size``, a valid token with six claims of 768
characters was a 500 ("upstream sent too big header").

The bound is computed from the sidecar's own limits: every standard credential header and up to
:data:`MAX_CLAIMS` configured claims, each value at most ``response.max_value_length`` characters
(the largest the configuration accepts) of up to four UTF-8 bytes, and all values together no
more than the IdP's answer the sidecar reads (``MAX_BODY_BYTES`` of the introspection client;
a locally validated JWT is smaller still: it fits in one request header). A claim that is also
mapped again under ``response.claims`` counts twice and is outside this bound.

Then real nginx, with the shipped snippet, passes a real oidc-provider token whose answer is as
large as the IdP's answer allows, every value at the maximum length; and the same nginx without
the snippet's buffer directives answers it 500, which is the bug.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.config import STANDARD_HEADERS, ConfigError, ResponseConfig, from_mapping
from sidecar.dev.pki import Issued
from sidecar.idp.introspection import MAX_BODY_BYTES as INTROSPECTION_MAX_BODY
from tests.interop.https import request
from tests.interop.nginx import DEPLOY, Nginx
from tests.interop.oidc_idp import BULKY_CLAIMS, BULKY_VALUE, OidcProvider
from tests.interop.stack import EchoUpstream, SidecarProcess
from tests.support.pki_fixtures import TestPki

pytestmark = pytest.mark.interop

SNIPPET = DEPLOY / "snippets" / "sidecar-check.conf"
MAX_CLAIMS = 8  # response.claims entries the snippet is sized for, besides the standard headers
CLAIM_NAME = 64  # bytes of the longest claim header name assumed (prefix included)
FIXED = 512  # status line, Content-Length, Content-Type, Date, Server, the final CRLF: well within
UTF8_MAX = 4  # bytes of one character, at most
BUFFER_DIRECTIVES = ("proxy_buffer_size", "proxy_buffers", "proxy_busy_buffers_size")


def largest_max_value_length() -> int:
    """The largest ``response.max_value_length`` the configuration accepts (found, not assumed)."""
    length = 16
    while True:
        try:
            from_mapping({"response": {"max_value_length": length * 2}})
        except ConfigError:
            break
        length *= 2
    low, high = length, length * 2  # low accepted, high refused
    while high - low > 1:
        middle = (low + high) // 2
        try:
            from_mapping({"response": {"max_value_length": middle}})
            low = middle
        except ConfigError:
            high = middle
    return low


def largest_answer_head(max_value_length: int, claims: int = MAX_CLAIMS) -> int:
    """Bytes of the largest status line and header block of an allow."""
    prefix = ResponseConfig().prefix
    names = sum(len(prefix + suffix) + len(": \r\n") for _, suffix in STANDARD_HEADERS)
    names += claims * (CLAIM_NAME + len(": \r\n"))
    values = min((len(STANDARD_HEADERS) + claims) * UTF8_MAX * max_value_length, INTROSPECTION_MAX_BODY)
    return FIXED + names + values


def size(text: str) -> int:
    """An nginx size ("640k", "1m", "4096") in bytes."""
    number, unit = re.fullmatch(r"(\d+)([kKmM]?)", text).groups()  # type: ignore[union-attr]
    return int(number) * {"": 1, "k": 1024, "m": 1024 * 1024}[unit.lower()]


def buffer_settings() -> dict[str, list[str]]:
    lines = (line.split("#", 1)[0].strip().rstrip(";").split() for line in SNIPPET.read_text().splitlines())
    return {line[0]: line[1:] for line in lines if line and line[0] in BUFFER_DIRECTIVES}


def test_the_snippets_buffers_fit_the_largest_answer_the_configuration_allows() -> None:
    assert largest_max_value_length() == 8192
    bound = largest_answer_head(8192)
    settings = buffer_settings()
    header_buffer = size(settings["proxy_buffer_size"][0])
    count, each = int(settings["proxy_buffers"][0]), size(settings["proxy_buffers"][1])
    busy = size(settings["proxy_busy_buffers_size"][0])
    assert header_buffer >= bound, (header_buffer, bound)
    # nginx's own rules for these three (it refuses to start otherwise; nginx -t runs below too).
    assert max(header_buffer, each) <= busy < count * each - each


def test_the_bound_is_the_answer_limit_when_values_at_the_maximum_would_exceed_it() -> None:
    per_value = largest_answer_head(8192, 0) - largest_answer_head(16, 0)
    assert largest_answer_head(16, 0) < INTROSPECTION_MAX_BODY < per_value + largest_answer_head(16, 0)
    assert largest_answer_head(8192) - largest_answer_head(8192, 0) == MAX_CLAIMS * (CLAIM_NAME + 4)


def bulky_claims_config() -> dict[str, str]:
    """The sidecar keeps every bulky claim, at the largest value length it allows."""
    claims = ",".join(f"{name}={name.replace('_', '-')}" for name in BULKY_CLAIMS if name.startswith("bulky_"))
    # nginx sends $host (no port): the one origin stands for every nginx this module starts.
    return {"SIDECAR_RESPONSE__CLAIMS": claims, "SIDECAR_RESPONSE__MAX_VALUE_LENGTH": str(largest_max_value_length()),
            "SIDECAR_ROUTING__ORIGINS": "https://127.0.0.1"}


def with_claim_headers(nginx: Nginx) -> None:
    """What the snippet asks of a deployment with response.claims: one pair of lines per claim."""
    protect = nginx.prefix / "snippets" / "sidecar-protect.conf"
    lines = [protect.read_text()]
    for name in BULKY_CLAIMS:
        if name.startswith("bulky_"):
            header = "x-credential-" + name.replace("_", "-")
            lines.append(f"auth_request_set ${name} $upstream_http_{header.replace('-', '_')};\n"
                         f"proxy_set_header {header} ${name};\n")
    protect.write_text("".join(lines))


def without_buffer_directives(nginx: Nginx) -> None:
    check = nginx.prefix / "snippets" / "sidecar-check.conf"
    kept = [line for line in check.read_text().splitlines(keepends=True)
            if not line.strip().startswith(BUFFER_DIRECTIVES)]
    check.write_text("".join(kept))


@pytest.fixture(scope="module")
def bulky(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> tuple[Issued, tuple[Path, Path]]:
    issued = pki.ca.issue("bulky")
    return issued, issued.write(tmp_path_factory.mktemp("bulky"), "bulky")


@pytest.fixture(scope="module")
def deployment(
    oidc: OidcProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[SidecarProcess, EchoUpstream]]:
    upstream = EchoUpstream()
    sidecar = SidecarProcess(oidc, tmp_path_factory.mktemp("buffers"), bulky_claims_config())
    try:
        sidecar.start()
        yield sidecar, upstream
    finally:
        sidecar.stop()
        upstream.close()


def nginx_for(oidc: OidcProvider, sidecar: SidecarProcess, upstream: EchoUpstream) -> Nginx:
    pki = oidc.pki
    return Nginx("api.conf.template", {
        "TLS_CERT": str(pki.idp_files[0]), "TLS_KEY": str(pki.idp_files[1]), "CLIENT_CA": str(pki.ca_file),
        "SIDECAR_ADDR": f"127.0.0.1:{sidecar.port}", "UPSTREAM_ADDR": f"127.0.0.1:{upstream.port}",
    })


def bulky_token(oidc: OidcProvider, files: tuple[Path, Path]) -> str:
    reply = request(oidc.mtls_endpoint("token_endpoint"), ca_file=oidc.pki.ca_file, cert=files,
                    form={"grant_type": "client_credentials", "client_id": "bulky", "scope": "read write"})
    assert reply.status == 200, reply.body
    return str(reply.json()["access_token"])


def answer_head(sidecar: SidecarProcess, token: str, issued: Issued) -> bytes:
    """The sidecar's answer as nginx's subrequest receives it, raw."""
    import socket
    from urllib.parse import quote

    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=10) as sock:
        sock.sendall(f"GET /_sidecar_check HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-Proto: https\r\n"
                     "Connection: close\r\n"
                     f"Authorization: Bearer {token}\r\n"
                     f"X-Client-Cert: {quote(issued.cert_pem.decode(), safe='')}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data and (chunk := sock.recv(1 << 20)):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"


def test_a_token_with_every_claim_at_the_maximum_passes_the_shipped_snippet_and_fails_without_it(
    oidc: OidcProvider, deployment: tuple[SidecarProcess, EchoUpstream], bulky: tuple[Issued, tuple[Path, Path]]
) -> None:
    sidecar, upstream = deployment
    issued, files = bulky
    token = bulky_token(oidc, files)
    head = answer_head(sidecar, token, issued)
    assert head.startswith(b"HTTP/1.1 200 "), head[:300]
    # Within 4 KiB of the bound (JSON syntax, the short standard claims and the names the bound
    # allows for make the difference), and far past nginx's default of one page.
    bound = largest_answer_head(largest_max_value_length())
    assert bound - 4096 <= len(head) <= bound, (len(head), bound)
    kept = BULKY_VALUE[:largest_max_value_length()]

    shipped = nginx_for(oidc, sidecar, upstream)
    with_claim_headers(shipped)
    try:
        shipped.start()
        reply = request(shipped.url + "/orders/1", ca_file=oidc.pki.ca_file, cert=files,
                        headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert reply.status == 200, (reply.status, shipped.error_log())
        seen = upstream.last
        assert seen.header("x-credential-client-id") == "bulky"

        def received(name: str) -> bytes:  # http.server reads header bytes as latin-1
            return (seen.header(f"x-credential-{name.replace('_', '-')}") or "").encode("latin-1")

        for name, value in BULKY_CLAIMS.items():  # sub, username and the claims, whole
            assert received(name) == value[:len(kept)].encode(), name
    finally:
        shipped.stop()

    default = nginx_for(oidc, sidecar, upstream)  # nginx's defaults: one page for the answer's head
    with_claim_headers(default)
    without_buffer_directives(default)
    try:
        default.start()
        reached = len(upstream.received)
        reply = request(default.url + "/orders/1", ca_file=oidc.pki.ca_file, cert=files,
                        headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert reply.status == 500 and "upstream sent too big header" in default.error_log()
        assert len(upstream.received) == reached
    finally:
        default.stop()
