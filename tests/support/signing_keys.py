"""Private keys written as PEM files, of the kinds a signing key file may (or may not) hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

KINDS: dict[str, Any] = {
    "ed25519": ed25519.Ed25519PrivateKey.generate,
    "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
}


def pem(kind: str = "ed25519") -> bytes:
    """A new private key of ``kind`` as unencrypted PKCS#8 PEM."""
    key = KINDS[kind]()
    return bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


def write_key(path: Path, kind: str = "ed25519") -> Path:
    """A new private key of ``kind`` in ``path`` (replaced whole)."""
    path.write_bytes(pem(kind))
    return path
