"""A throwaway certificate authority for the demo and the tests (never for production keys).

EC P-256 keys: fast to make, and what current IdPs and proxies accept.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sidecar.core.client_cert import thumbprint


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def x5t_s256(self) -> str:
        return thumbprint(self.der)

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """Write ``name.crt`` and ``name.key`` (mode 0600) and return their paths."""
        cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
        cert_path.write_bytes(self.cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(self.key_pem)
        return cert_path, key_path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class CertificateAuthority:
    """A root CA (or, with ``parent``, an intermediate signed by it), RFC 5280 profile: key
    identifiers and key usages, so strict path validation (cryptography's verifier) accepts it."""

    def __init__(self, common_name: str = "sidecar test CA", *, parent: CertificateAuthority | None = None) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        issuer = parent.root if parent is not None else None
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(issuer.cert.subject if issuer else _name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None if issuer is None else 0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        if issuer is not None:
            builder = builder.add_extension(_authority_key_id(issuer), critical=False)
        self.root: Issued = Issued(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)

    def intermediate(self, common_name: str) -> CertificateAuthority:
        """A CA signed by this one: its leaves chain to this CA through it."""
        return CertificateAuthority(common_name, parent=self)

    def issue(
        self, common_name: str, *, server_names: tuple[str, ...] = (), days: float = 7,
        not_before: dt.datetime | None = None, client_auth: bool = True,
    ) -> Issued:
        """A leaf for TLS clients, and for servers when ``server_names`` are given."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        usages = ([ExtendedKeyUsageOID.CLIENT_AUTH] if client_auth else []) + (
            [ExtendedKeyUsageOID.SERVER_AUTH] if server_names else [])
        usages = usages or [ExtendedKeyUsageOID.CODE_SIGNING]  # client_auth=False: a leaf not for TLS clients
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(self.root.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, True, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(_authority_key_id(self.root), critical=False)
        )
        if server_names:
            names = x509.SubjectAlternativeName([_san(n) for n in server_names])
            builder = builder.add_extension(names, critical=False)
        return Issued(builder.sign(self.root.key, hashes.SHA256()), key)


def _authority_key_id(issuer: Issued) -> x509.AuthorityKeyIdentifier:
    ski = issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)
