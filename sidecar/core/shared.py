"""A second cache level behind the in-process one, shared by a fleet of replicas.

The core knows only this interface (:mod:`sidecar.fleet` implements it on Redis). On a miss the
decision hands it the call to the verifier: the shared level answers from its store, or makes
the call (once across the fleet) and shares the answer. A cache hit never reaches it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from sidecar.core.token_info import TokenInfo

Verify = Callable[[], Awaitable[TokenInfo]]


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
