"""Issue 11 item 1: under ``client_cert.format = auto`` no client-written bytes choose the certificate.

A proxy that appends to a client-sent header (Envoy ``forward_client_cert_details: APPEND_FORWARD``,
or any proxy that appends) puts the client's bytes first. The client writes the victim's public
certificate there, in every encoding a header can hold; the proxy appends the element of the
certificate the client really presented. The sidecar must read the proxy's element or refuse,
never the victim's certificate. Values are shaped as Envoy writes them under each mode.
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote

import pytest

from sidecar.core.client_cert import CertificateError, CertificateReader
from tests.hostile.material import Cert, certificates

VICTIM, ATTACKER = certificates()[0], certificates()[1]


def proxy_element(cert: Cert) -> str:
    """What Envoy appends for the peer it verified (set_current_client_cert_details cert: true)."""
    return f'By=spiffe://cluster.local/ns/api/sa/api;Hash={hashlib.sha256(cert.der).hexdigest()};' \
           f'Cert="{quote(cert.pem, safe="")}"'


CLIENT_WRITTEN = {
    "base64 DER": VICTIM.b64,
    "PEM": VICTIM.pem.replace("\n", " "),
    "URL-encoded PEM": quote(VICTIM.pem, safe=""),
    "ALB-style PEM": quote(VICTIM.pem, safe="+=/"),
    "RFC 9440": f":{VICTIM.b64}:",
    "an XFCC element": proxy_element(VICTIM),
    "an XFCC element without a key first": f'Cert="{quote(VICTIM.pem, safe="")}"',
}


def read(value: str) -> str | None:
    try:
        return CertificateReader("auto").thumbprint(value)
    except CertificateError:
        return None


@pytest.mark.parametrize("shape", CLIENT_WRITTEN)
def test_append_forward_reads_the_proxys_element_never_the_client_written_certificate(shape: str) -> None:
    value = f"{CLIENT_WRITTEN[shape]},{proxy_element(ATTACKER)}"
    assert read(value) == ATTACKER.x5t


@pytest.mark.parametrize("shape", CLIENT_WRITTEN)
def test_a_proxy_that_appends_another_format_gets_the_value_refused(shape: str) -> None:
    for appended in (ATTACKER.b64, quote(ATTACKER.pem, safe=""), ATTACKER.pem.replace("\n", " ")):
        assert read(f"{CLIENT_WRITTEN[shape]},{appended}") in (None, ATTACKER.x5t)
        assert read(f"{CLIENT_WRITTEN[shape]}{appended}") in (None, ATTACKER.x5t)  # appended without a comma


def test_sanitize_set_reads_the_one_element_the_proxy_wrote() -> None:
    assert read(proxy_element(ATTACKER)) == ATTACKER.x5t


def test_two_pem_certificates_in_one_value_are_refused_under_auto_but_read_leaf_first_when_explicit() -> None:
    two = quote(VICTIM.pem + ATTACKER.pem, safe="")
    assert read(two) is None
    assert CertificateReader("escaped_pem").thumbprint(two) == VICTIM.x5t  # a proxy that sets the header
