"""What makes Redis useless to an attacker: keyed key names and sealed values.

- **Names**: a key in Redis is a keyed digest (the fleet secret), never a token nor a plain hash
  of one; a reader cannot match it against a leaked token list.
- **Values** are AES-256-GCM under the fleet key, with the Redis key as associated data: a reader
  learns no claims, and a writer can neither forge an answer nor move one token's answer onto
  another token's key. The key id travels in the value; during a rotation the previous key still
  opens values, and only the current key seals.

A value that does not open is :class:`Tampered` (a miss for the caller, and counted).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sidecar.config import ConfigError

VERSION = b"\x01"
KID_BYTES = 4
NONCE_BYTES = 12
MIN_SECRET = 32


class Tampered(ValueError):
    """A value that is not one we sealed (wrong key, altered bytes, moved between keys)."""


def derive(material: bytes, label: str, size: int = 32) -> bytes:
    return HKDF(hashes.SHA256(), size, salt=b"sidecar-fleet", info=label.encode()).derive(material)


def read_material(key: str, path: str | None) -> bytes:
    """The content of the file configured at ``key`` (at least 32 characters once stripped);
    never logged."""
    data = Path(path).read_bytes().strip() if path else b""
    if len(data) < MIN_SECRET:
        raise ConfigError(key, f"the file must hold at least {MIN_SECRET} characters")
    return data


class Sealer:
    __slots__ = ("_current", "_keys", "kid")

    def __init__(self, current: bytes, previous: bytes | None = None) -> None:
        """``current`` and ``previous`` are key file contents; the AES keys are derived from them."""
        self._keys: dict[bytes, AESGCM] = {}
        for material in (previous, current):
            if material is not None:
                key = derive(material, "seal v1")
                self._keys[hashlib.sha256(key).digest()[:KID_BYTES]] = AESGCM(key)
        self.kid = hashlib.sha256(derive(current, "seal v1")).digest()[:KID_BYTES]
        self._current = self._keys[self.kid]

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return VERSION + self.kid + nonce + self._current.encrypt(nonce, plaintext, aad)

    def open(self, aad: bytes, blob: bytes) -> bytes:
        head = 1 + KID_BYTES + NONCE_BYTES
        if len(blob) < head + 16 or blob[:1] != VERSION:
            raise Tampered("not a sealed value")
        aead = self._keys.get(blob[1:1 + KID_BYTES])
        if aead is None:
            raise Tampered("unknown key id")
        try:
            return aead.decrypt(blob[1 + KID_BYTES:head], blob[head:], aad)
        except InvalidTag:
            raise Tampered("authentication failed") from None


class Names:
    """The names of a token's keys in Redis, keyed by the fleet secret, and the fleet's channel."""

    __slots__ = ("_replay_key", "channel", "digest_key", "prefix", "tag")

    def __init__(self, secret: bytes, prefix: str) -> None:
        self.digest_key = derive(secret, "token digest", 32)  # the in-process cache's key (same fleet-wide)
        self._replay_key = derive(secret, "replay", 32)
        self.tag = derive(secret, "fleet tag", 8).hex()  # in every message: replicas with another secret differ
        self.prefix = prefix
        self.channel = f"{prefix}fleet"

    def value(self, key: bytes) -> str:
        """``key`` is the token's keyed digest (the cache key). The braces are a cluster hash tag:
        a token's value and lock live in one slot."""
        return f"{self.prefix}a:{{{key.hex()}}}"

    def lock(self, key: bytes) -> str:
        return f"{self.prefix}l:{{{key.hex()}}}"

    def replay(self, key: bytes) -> str:
        return f"{self.prefix}r:" + hashlib.blake2b(key, key=self._replay_key, digest_size=16).hexdigest()
