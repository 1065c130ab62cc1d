"""What the decision needs from outside the core, as protocols: the core never imports the code
that implements them (sidecar/idp, sidecar/fleet); the runtime wires them in.

- :class:`Verifier`: says what a token is (introspection, local RFC 9068 validation, or a choice),
  asking the issuers the request's policy accepts.
- :class:`SharedAnswers`: a second cache level behind the in-process one, shared by a fleet of
  replicas; asked on a miss before the IdP (a cache hit never reaches it).
- :class:`SharedReplay`: the fleet's DPoP replay store, asked after the replica's own store
  accepted a proof, so that a proof accepted by one replica is a replay on the others.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from sidecar.core.token_info import TokenInfo

Verify = Callable[[], Awaitable[TokenInfo]]


class Verifier(Protocol):
    async def verify(self, token: str, issuers: tuple[str, ...]) -> TokenInfo:
        """The token's information; raises a Denial (IdpUnavailable when the IdP cannot say).

        ``issuers``: the configured issuers the policy accepts, in order. A JWT goes to the one its
        ``iss`` names; an opaque token is introspected at these, in order, until one knows it."""
        ...


class SharedAnswers(Protocol):
    @property
    def digest_key(self) -> bytes:
        """The key of the cache's token digests: the same on every replica, so a purge names one
        entry fleet-wide."""
        ...

    async def load(self, key: bytes, token: str, verify: Verify) -> tuple[TokenInfo, float]:
        """The token's answer and the wall-clock time (epoch seconds) past which it must not be
        reused (``math.inf``: the cache's own rule alone). Raises what ``verify`` raises."""
        ...


class SharedReplay(Protocol):
    @property
    def secret(self) -> bytes:
        """The key of the replay keys: the same on every replica, so that they name a proof alike."""
        ...

    async def claim(self, key: bytes, until: float) -> bool:
        """True unless another replica claimed ``key`` before the wall-clock ``until``."""
        ...
