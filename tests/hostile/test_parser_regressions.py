"""Bugs that the hostile-input tests found in the parsers, one test each (fixed surgically).

Each raised something other than the documented typed errors, or let a value through that later
broke every response.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.config import ConfigError, from_mapping, load
from sidecar.core.binding import check_binding
from sidecar.core.client_cert import CertificateError, CertificateReader
from sidecar.core.errors import InvalidToken
from sidecar.core.headers import HeaderBuilder, sanitize
from sidecar.core.token_info import MalformedTokenInfo, token_info_from_claims
from tests.hostile.material import certificates


@pytest.mark.parametrize("number", ["Infinity", "-Infinity", "NaN", "1" + "0" * 400, "1e300"])
def test_an_introspection_time_that_is_not_a_comparable_number_is_malformed_not_an_overflow(number: str) -> None:
    # Python's json accepts NaN/Infinity; int(inf) raised OverflowError, int(nan) ValueError, and a
    # 400-digit exp overflowed later in the cache TTL computation (an internal error, not a deny).
    claims = json.loads(f'{{"active": true, "exp": {number}}}')
    with pytest.raises(MalformedTokenInfo, match="exp"):
        token_info_from_claims(claims)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_number_in_the_configuration_is_rejected(value: str) -> None:
    # policy.leeway = nan passed "leeway < 0 or leeway > 300" and then made every token immortal:
    # "now > exp + nan" is always false.
    with pytest.raises(ConfigError, match=r"policy\.leeway"):
        from_mapping({}, {"SIDECAR_POLICY__LEEWAY": value})
    with pytest.raises(ConfigError, match=r"cache\.max_ttl"):
        from_mapping({"cache": {"max_ttl": float(value)}})


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"response": {"claims": {"tenant": "tenant\n"}}}, "response.claims.tenant"),
        ({"client_cert": {"header": "x-client-cert\n"}}, "client_cert.header"),
        ({"response": {"remove_upstream_headers": ["authorization\n"]}}, "response.remove_upstream_headers"),
        ({"response": {"realm": "api\r\nSet-Cookie: a=b"}}, "response.realm"),
    ],
)
def test_a_header_name_or_realm_with_a_line_break_is_rejected_at_start(raw: dict[str, object], key: str) -> None:
    # The header-name regex ended in "$", which matches before a trailing newline; such a name (or
    # a realm with CR/LF) made aiohttp refuse every allow or deny response with a 500.
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_mapping(raw)


def test_a_lone_surrogate_in_a_claim_never_reaches_a_header() -> None:
    # JSON "\ud800" decodes to a lone surrogate, which cannot be encoded into a response header.
    info = token_info_from_claims(json.loads('{"active": true, "sub": "a\\ud800b", "scope": "r\\udfff"}'))
    headers = HeaderBuilder(from_mapping({}).response).build(info)
    assert headers["x-credential-sub"] == "ab" and headers["x-credential-scope"] == "r"
    for value in headers.values():
        value.encode("utf-8")  # raised UnicodeEncodeError before the fix
    assert sanitize("\udc80x", 10) == "x"


def test_a_lone_surrogate_in_cnf_is_a_mismatch_not_an_encoding_error() -> None:
    info = token_info_from_claims(json.loads('{"active": true, "cnf": {"x5t#S256": "\\ud800"}}'))
    with pytest.raises(InvalidToken) as denied:
        check_binding(info, "A" * 43, "strict")
    assert denied.value.reason == "cnf_mismatch"


def test_a_configuration_file_that_is_not_utf8_is_a_config_error_and_exit_2(tmp_path: Path) -> None:
    # read_text raised UnicodeDecodeError (a ValueError, not an OSError): a traceback and exit 1.
    path = tmp_path / "bad.toml"
    path.write_bytes(b"[server]\nport = 8080\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"^config: .* is not UTF-8"):
        load(path)
    result = subprocess.run([sys.executable, "-m", "sidecar", "check-config", "--config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "not UTF-8" in result.stderr


def test_a_certificate_with_an_invalid_x509_version_is_a_certificate_error() -> None:
    # Found by the atheris target: cryptography raises x509.InvalidVersion, which is not a
    # ValueError, so it escaped the reader (an internal_error 503 instead of cert_invalid 401).
    der = certificates()[0].der
    at = der.find(bytes.fromhex("a003020102"))  # [0] EXPLICIT INTEGER 2 (v3)
    bad = der[:at] + bytes.fromhex("a00302011c") + der[at + 5:]
    encoded = base64.b64encode(bad).decode()
    for fmt, value in (("der_base64", encoded),
                       ("pem", f"-----BEGIN CERTIFICATE-----{encoded}-----END CERTIFICATE-----")):
        with pytest.raises(CertificateError):
            CertificateReader(fmt).thumbprint(value)  # type: ignore[arg-type]


def test_a_memoized_certificate_failure_does_not_grow_with_each_request() -> None:
    # Found by bench/soak.py: the memo re-raised one exception instance, and each raise chained
    # its traceback onto it (about 1 KiB per request with the same bad header: RSS grew without bound).
    import traceback
    import tracemalloc

    reader = CertificateReader("xfcc")
    value = "By=spiffe://a;Hash=" + "ab" * 32  # Istio's default XFCC, Hash not trusted: every request

    def depth() -> int:
        try:
            reader.thumbprint(value)
        except CertificateError as error:
            return len(traceback.extract_tb(error.__traceback__))
        raise AssertionError("no CertificateError")

    assert depth() == depth()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(5000):
            depth()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 100_000, grown
