"""RFC 9449 §9: the resource server's DPoP nonces (``dpop.nonce``), stateless and shared by a fleet.

A nonce is the time it was issued and a keyed BLAKE2b tag of that time, base64url: nothing is
stored, and every replica that holds the same key accepts a nonce any other one issued. The key is
derived from the fleet's shared secret (the key of the DPoP replay keys, so every replica names
proofs and nonces alike); a single process uses a random key of its own.

Issued times are multiples of a quarter of ``dpop.nonce_lifetime``: every replica hands out the
same nonce within a quarter (their clocks agreeing within ``dpop.iat_skew``), a new one each
quarter, and a nonce is accepted until ``dpop.nonce_lifetime`` after it was issued (three quarters
of it at least after a client received it). The current nonce is built once per quarter, so
answering with it costs a comparison; checking one costs a dictionary lookup once it has been
seen (at most a few are current at a time).

RFC 9449 §9: "the resource server ... provide[s] a nonce value ... using the DPoP-Nonce header";
§8.2: a client uses the newest one it was given. A proof refused for its nonce (missing where one
is required, unknown, expired) gets ``use_dpop_nonce`` with the current nonce (§9, Figure 22).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
from collections.abc import Callable

from sidecar.support.jose import b64url, b64url_decode
from sidecar.support.memo import Memo

TAG_SIZE = 16
QUARTERS = 4


class Nonces:
    __slots__ = ("_accepted", "_clock", "_current", "_current_until", "_key", "_lifetime", "_skew", "_step")

    def __init__(self, lifetime: float, *, skew: float, secret: bytes | None = None,
                 clock: Callable[[], float]) -> None:
        """``secret``: shared by every replica (the fleet's); None: a key of this process's own."""
        self._key = hashlib.blake2b(key=secret or os.urandom(32), digest_size=TAG_SIZE, person=b"dpop nonce")
        self._lifetime = lifetime
        self._step = lifetime / QUARTERS
        self._skew = skew
        self._clock = clock
        self._current = ""
        self._current_until = -math.inf
        self._accepted: Memo[str, int] = Memo(64)  # nonce -> issued time, for nonces whose tag held

    def current(self) -> str:
        """The nonce to hand out now (RFC 9449 §8.2: the ``DPoP-Nonce`` header)."""
        now = self._clock()
        if now >= self._current_until:
            issued = int(now // self._step * self._step)
            self._current = self._issue(issued)
            self._current_until = issued + self._step
        return self._current

    def accepts(self, nonce: object) -> bool:
        """Whether ``nonce`` was issued by this key and is still current (never raises)."""
        if not isinstance(nonce, str):
            return False
        issued = self._accepted.get(nonce)
        if issued is None:
            issued = self._verified(nonce)
            if issued is None:
                return False
            self._accepted.put(nonce, issued)
        now = self._clock()
        return now - self._lifetime <= issued <= now + self._skew

    def _issue(self, issued: int) -> str:
        stamp = issued.to_bytes(8, "big")
        return b64url(stamp + self._tag(stamp))

    def _verified(self, nonce: str) -> int | None:
        if len(nonce) > 64:
            return None
        try:
            raw = b64url_decode(nonce)
        except ValueError:
            return None
        stamp, tag = raw[:8], raw[8:]
        # Constant time: how much of a forged tag matched must not leak.
        if len(stamp) != 8 or not hmac.compare_digest(tag, self._tag(stamp)):
            return None
        return int.from_bytes(stamp, "big")

    def _tag(self, stamp: bytes) -> bytes:
        hashed = self._key.copy()
        hashed.update(stamp)
        return hashed.digest()
