"""The keys that sign identity tokens: ``identity.key_file``, re-read when it changes, rotated with
an overlap so that no upstream refuses a token during a rotation (docs/identity.md).

A rotation has three steps, each taken at the first poll (every ``identity.reload_interval``)
past its time, so never early:

1. the key file changes: the new key is **published** (JWK Set) but the old one still signs;
2. ``identity.rotation_overlap`` later the new key **signs**: every upstream has had that long to
   fetch the JWK Set that holds it (its cache time must be shorter);
3. ``rotation_overlap`` after that the old key is **withdrawn**: every token it signed has expired
   (``identity.ttl`` is at most the overlap).

A file that does not load keeps the current key (logged, never the key). Each key's ``kid`` is its
RFC 7638 thumbprint, so replicas given the same file publish the same JWK Set. The JWK Set is
serialized once per change (the admin port serves those bytes) and, with ``identity.jwks_file``,
written atomically to that file for upstreams that cannot reach the admin port.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sidecar.config import IdentityConfig
from sidecar.support.jose import SigningKey, public_jwk, signing_key
from sidecar.support.watch import FileWatch, Snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Key:
    """One signing key: the private key, its JWS ``alg`` and its public JWK (``kid`` inside)."""

    private: SigningKey
    alg: str
    jwk: dict[str, str]

    @property
    def kid(self) -> str:
        return self.jwk["kid"]

    @classmethod
    def from_pem(cls, pem: bytes) -> Key:
        private, alg = signing_key(pem)
        return cls(private, alg, public_jwk(private, alg))


class SigningKeys:
    """The signing key now, the keys published, and the rotation between them."""

    __slots__ = ("_clock", "_config", "_next", "_retired", "_watch", "jwks", "signing")

    def __init__(self, config: IdentityConfig, clock: Callable[[], float] = time.monotonic) -> None:
        """Loads ``identity.key_file`` now; raises ValueError (or OSError) when it does not load."""
        assert config.key_file
        self._config = config
        self._clock = clock
        self._watch = FileWatch({"key_file": config.key_file})
        self.signing = Key.from_pem(self._snapshot(self._watch.poll()))
        self._next: tuple[Key, float] | None = None  # published, signing from that time
        self._retired: list[tuple[Key, float]] = []  # still published until that time
        self.jwks = b""
        self._publish()

    def reconfigure(self, config: IdentityConfig) -> None:
        """A reload's settings (the overlap, the JWK Set file; ``key_file`` needs a restart): the
        keys and a rotation in progress go on, so a reload neither signs early nor withdraws a key."""
        assert config.key_file == self._config.key_file
        jwks_file, self._config = self._config.jwks_file, config
        if config.jwks_file != jwks_file:
            self._publish()

    @staticmethod
    def _snapshot(snapshot: Snapshot | None) -> bytes:
        assert snapshot is not None
        return snapshot.contents["key_file"]

    @property
    def published(self) -> list[Key]:
        """Every key in the JWK Set: the signing one, the next one, the retired ones."""
        keys = [self.signing, *(k for k, _ in self._retired)]
        if self._next is not None:
            keys.insert(1, self._next[0])
        return list({k.kid: k for k in keys}.values())  # a key rolled back to is listed once

    def poll(self) -> bool:
        """Take every rotation step that is due; True when the JWK Set changed."""
        before = [k.kid for k in self.published]
        self._read_file()
        now = self._clock()
        overlap = self._config.rotation_overlap
        if self._next is not None and now >= self._next[1]:
            self._retired.append((self.signing, now + overlap))
            self.signing, self._next = self._next[0], None
            log.warning("identity key rotated", extra={"kid": self.signing.kid})
        self._retired = [(k, until) for k, until in self._retired if until > now and k.kid != self.signing.kid]
        changed = [k.kid for k in self.published] != before
        if changed:
            self._publish()
        return changed

    def _read_file(self) -> None:
        try:
            snapshot = self._watch.poll()
            if snapshot is None:
                return
            key = Key.from_pem(self._snapshot(snapshot))
        except (OSError, ValueError) as exc:
            log.error("identity.key_file does not load; keeping the current key",
                      extra={"error_type": type(exc).__name__})
            return
        if key.kid == self.signing.kid:
            self._next = None  # back to the key that signs: nothing to rotate
            return
        # A next key that never signed is simply replaced: no token carries its kid.
        self._next = (key, self._clock() + self._config.rotation_overlap)
        log.warning("identity key published", extra={"kid": key.kid,
                                                      "signs_in": self._config.rotation_overlap})

    def _publish(self) -> None:
        """Serialize the JWK Set once, and write it to ``identity.jwks_file`` (atomically)."""
        self.jwks = json.dumps({"keys": [k.jwk for k in self.published]}, separators=(",", ":")).encode()
        path = self._config.jwks_file
        if not path:
            return
        try:
            write_atomically(Path(path), self.jwks)
        except OSError as exc:
            log.error("identity.jwks_file cannot be written", extra={"error_type": type(exc).__name__,
                                                                     "path": path})


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` in ``path`` whole or not at all: a reader never sees half a JWK Set."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(name, 0o644)  # public keys: readable by the upstream's user
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
