"""Certificate header formats -> RFC 8705 x5t#S256, against a pinned vector computed by openssl."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from urllib.parse import quote

import pytest

from sidecar.core import client_cert
from sidecar.core.client_cert import CertificateError, CertificateReader, detect_format, thumbprint

VECTORS = Path(__file__).parent / "vectors"
PEM = (VECTORS / "vector.crt").read_text()
EXPECTED = (VECTORS / "vector.x5t").read_text().strip()  # openssl dgst -sha256 | base64url
DER = base64.b64decode("".join(PEM.strip().splitlines()[1:-1]))
B64 = base64.b64encode(DER).decode()


def test_thumbprint_matches_the_openssl_vector_and_has_43_characters() -> None:
    assert thumbprint(DER) == EXPECTED
    assert len(EXPECTED) == 43 and "=" not in EXPECTED


FORMATS = [
    ("escaped_pem", quote(PEM, safe="")),  # nginx $ssl_client_escaped_cert
    ("alb", quote(PEM, safe="+=/")),  # AWS ALB leaves + = / unescaped
    ("pem", PEM.replace("\n", " ")),
    ("pem", PEM.replace("\n", "")),
    ("der_base64", B64),
    ("traefik", f"{B64},{B64}"),
    ("rfc9440", f":{B64}:"),
    ("xfcc", f'By=spiffe://a;Hash=00;Cert="{quote(PEM, safe="")}"'),
    ("xfcc", f'Cert="%2D";By=x,By=spiffe://b;Cert="{quote(PEM, safe="")}";Subject="CN=a,O=b"'),
]


@pytest.mark.parametrize(("fmt", "value"), FORMATS)
def test_each_header_format_gives_the_pinned_thumbprint(fmt: str, value: str) -> None:
    assert CertificateReader(fmt).thumbprint(value) == EXPECTED  # type: ignore[arg-type]


@pytest.mark.parametrize(("fmt", "value"), FORMATS)
def test_auto_reads_every_single_certificate_format_and_refuses_a_list(fmt: str, value: str) -> None:
    if fmt == "traefik":  # a list of certificates: the explicit format only
        with pytest.raises(CertificateError, match="more than one certificate"):
            CertificateReader("auto").thumbprint(value)
    else:
        assert CertificateReader("auto").thumbprint(value) == EXPECTED


def test_alb_plus_sign_is_not_a_space() -> None:
    value = quote(PEM, safe="+=/")
    assert "+" in value or "/" in value
    assert detect_format(value) == "escaped_pem"
    assert CertificateReader("alb").thumbprint(value) == EXPECTED


def test_xfcc_hash_is_used_only_when_trusted() -> None:
    hex_hash = hashlib.sha256(DER).hexdigest()
    value = f"By=spiffe://cluster.local/ns/a/sa/b;Hash={hex_hash};Subject=\"\";URI=spiffe://x"
    with pytest.raises(CertificateError):
        CertificateReader("xfcc").thumbprint(value)
    assert CertificateReader("xfcc", trust_xfcc_hash=True).thumbprint(value) == EXPECTED


def test_xfcc_uses_the_last_element_not_a_client_supplied_earlier_one() -> None:
    other = quote(PEM.replace("A", "B", 1), safe="")
    value = f'Cert="{other}",Cert="{quote(PEM, safe="")}"'
    assert CertificateReader("xfcc").thumbprint(value) == EXPECTED


@pytest.mark.parametrize(
    "value",
    ["", "%ZZ", "-----BEGIN CERTIFICATE-----AAAA-----END CERTIFICATE-----", ":not base64!:",
     base64.b64encode(b"not a certificate").decode(), "Cert=\"unterminated", "By=x;Hash=zz"],
)
def test_garbage_is_a_certificate_error(value: str) -> None:
    for fmt in ("auto", "escaped_pem", "der_base64", "xfcc", "rfc9440"):
        with pytest.raises(CertificateError):
            CertificateReader(fmt).thumbprint(value)  # type: ignore[arg-type]


def test_results_and_failures_are_memoized_per_header_value(monkeypatch: pytest.MonkeyPatch) -> None:
    reader = CertificateReader("der_base64")
    assert reader.thumbprint(B64) == EXPECTED
    with pytest.raises(CertificateError):
        reader.thumbprint("!!")
    calls: list[bytes] = []
    monkeypatch.setattr(client_cert, "_checked_thumbprint", lambda der: calls.append(der) or "other")
    assert reader.thumbprint(B64) == EXPECTED  # served from the memo, not parsed again
    with pytest.raises(CertificateError):
        reader.thumbprint("!!")
    assert calls == []
    assert CertificateReader("der_base64").thumbprint(B64) == "other"  # a fresh reader parses
