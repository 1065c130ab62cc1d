"""Test PKI: one CA, the IdP's server certificate, the sidecar's client certificate, and two
API clients (alice, bob). Minted at test time; nothing secret is committed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sidecar.dev.pki import CertificateAuthority, Issued


@dataclass(frozen=True)
class TestPki:
    __test__ = False

    directory: Path
    ca: CertificateAuthority
    ca_file: Path
    idp: Issued
    idp_files: tuple[Path, Path]
    sidecar: Issued
    sidecar_files: tuple[Path, Path]
    alice: Issued
    alice_files: tuple[Path, Path]
    bob: Issued
    bob_files: tuple[Path, Path]


def make_pki(directory: Path) -> TestPki:
    ca = CertificateAuthority()
    ca_file = directory / "ca.crt"
    ca_file.write_bytes(ca.root.cert_pem)
    idp = ca.issue("127.0.0.1", server_names=("127.0.0.1", "localhost"))
    sidecar, alice, bob = ca.issue("sidecar"), ca.issue("alice"), ca.issue("bob")
    return TestPki(
        directory, ca, ca_file,
        idp, idp.write(directory, "idp"),
        sidecar, sidecar.write(directory, "sidecar"),
        alice, alice.write(directory, "alice"),
        bob, bob.write(directory, "bob"),
    )
