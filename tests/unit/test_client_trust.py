"""Optional CA validation of the forwarded certificate (client_cert.ca_file): the chain a header
carries must end at a CA of the bundle, within the validity period of the whole chain (with the
leeway)."""

from __future__ import annotations

import base64
import datetime as dt
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from sidecar.core.client_cert import CertificateReader
from sidecar.core.client_trust import ClientTrust, window_problem
from sidecar.dev.pki import CertificateAuthority, Issued

CA = CertificateAuthority("trusted client CA")
INTERMEDIATE = CA.intermediate("trusted intermediate")
ROGUE = CertificateAuthority("rogue CA")


def bundle(tmp_path: Path, *cas: CertificateAuthority) -> Path:
    path = tmp_path / "clients-ca.pem"
    path.write_bytes(b"".join(ca.root.cert_pem for ca in cas))
    return path


def escaped(*certs: Issued) -> str:
    return quote(b"".join(c.cert_pem for c in certs).decode(), safe="")


def verdict(tmp_path: Path, value: str, fmt: str = "escaped_pem", **trust: bool) -> str | None:
    reader = CertificateReader(fmt, trust=ClientTrust(str(bundle(tmp_path, CA)), **trust))  # type: ignore[arg-type]
    presented = reader.presented(value)
    return window_problem(presented, time.time(), 5.0) or presented.problem


def test_a_leaf_of_the_bundles_ca_is_trusted_and_keeps_its_thumbprint(tmp_path: Path) -> None:
    alice = CA.issue("alice")
    reader = CertificateReader("escaped_pem", trust=ClientTrust(str(bundle(tmp_path, CA))))
    presented = reader.presented(escaped(alice))
    assert presented.problem is None and presented.thumbprint == alice.x5t_s256
    assert reader.thumbprint(escaped(alice)) == alice.x5t_s256


def test_a_leaf_of_another_ca_is_untrusted(tmp_path: Path) -> None:
    assert verdict(tmp_path, escaped(ROGUE.issue("mallory"))) == "cert_untrusted"


def test_an_intermediate_carried_in_the_header_completes_the_chain(tmp_path: Path) -> None:
    leaf = INTERMEDIATE.issue("alice")
    assert verdict(tmp_path, escaped(leaf, INTERMEDIATE.root)) is None
    assert verdict(tmp_path, escaped(leaf)) == "cert_untrusted"  # without it: no path to the bundle
    der = [base64.b64encode(c.der).decode() for c in (leaf, INTERMEDIATE.root)]
    assert verdict(tmp_path, ",".join(der), "traefik") is None  # Traefik's list, leaf first
    xfcc = f'Hash=00;Cert="{escaped(leaf)}";Chain="{escaped(leaf, INTERMEDIATE.root)}"'
    assert verdict(tmp_path, xfcc, "xfcc") is None  # XFCC Chain=


def test_an_expired_or_not_yet_valid_leaf_is_refused_beyond_the_leeway(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    expired = CA.issue("old", not_before=now - dt.timedelta(days=2), days=1)
    future = CA.issue("new", not_before=now + dt.timedelta(hours=1))
    barely = CA.issue("barely", not_before=now - dt.timedelta(days=1, seconds=-2), days=1)  # ends in 2 s
    assert verdict(tmp_path, escaped(expired)) == "cert_expired"
    assert verdict(tmp_path, escaped(future)) == "cert_not_yet_valid"
    assert verdict(tmp_path, escaped(barely)) is None


def test_the_client_auth_usage_is_required_only_when_configured(tmp_path: Path) -> None:
    signer = CA.issue("signer", client_auth=False)  # EKU codeSigning only
    assert verdict(tmp_path, escaped(signer)) == "cert_untrusted"  # an EKU without clientAuth never passes
    assert verdict(tmp_path, escaped(CA.issue("alice")), require_client_auth=True) is None


def test_an_xfcc_hash_alone_cannot_be_validated(tmp_path: Path) -> None:
    reader = CertificateReader("xfcc", trust_xfcc_hash=True, trust=ClientTrust(str(bundle(tmp_path, CA))))
    assert reader.presented("Hash=" + "ab" * 32).problem == "cert_untrusted"


def test_a_changed_bundle_is_reloaded_and_drops_every_memoized_verdict(tmp_path: Path) -> None:
    path = bundle(tmp_path, ROGUE)
    trust = ClientTrust(str(path))
    reader = CertificateReader("escaped_pem", trust=trust)
    value = escaped(CA.issue("alice"))
    assert reader.presented(value).problem == "cert_untrusted"
    assert trust.reload() is False  # unchanged
    path.write_bytes(CA.root.cert_pem)
    assert trust.reload() is True
    reader.forget()
    assert reader.presented(value).problem is None


def test_a_bundle_without_a_certificate_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "empty.pem"
    path.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=r"client_cert\.ca_file"):
        ClientTrust(str(path))


def test_a_memoized_chain_verdict_lasts_no_longer_than_the_earliest_not_after_of_its_chain(tmp_path: Path) -> None:
    leaf = INTERMEDIATE.issue("alice", days=60)  # outlives its intermediate (30 days)
    reader = CertificateReader("escaped_pem", trust=ClientTrust(str(bundle(tmp_path, CA))))
    value = escaped(leaf, INTERMEDIATE.root)
    presented = reader.presented(value)
    assert presented.problem is None and reader.presented(value) is presented  # memoized with the header value
    intermediate_ends = INTERMEDIATE.root.cert.not_valid_after_utc.timestamp()
    assert presented.not_after == intermediate_ends < leaf.cert.not_valid_after_utc.timestamp()
    assert window_problem(presented, intermediate_ends - 60, 5.0) is None
    assert window_problem(presented, intermediate_ends + 60, 5.0) == "cert_expired"  # the memo no longer allows


def test_a_chain_is_not_valid_before_its_latest_not_before(tmp_path: Path) -> None:
    late = CA.intermediate("a newer intermediate")  # begins 5 minutes ago, like every test CA
    leaf = late.issue("alice", not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    presented = CertificateReader("escaped_pem", trust=ClientTrust(str(bundle(tmp_path, CA)))).presented(
        escaped(leaf, late.root))
    assert presented.not_before == late.root.cert.not_valid_before_utc.timestamp()
