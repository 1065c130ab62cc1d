"""The fleet-wide half of DPoP replay protection (RFC 9449 §11.1): a proof's ``jti`` is accepted
once across every replica (:class:`~sidecar.core.ports.SharedReplay`).

The decision asks it after the replica's own store (:class:`~sidecar.core.replay.LocalReplayStore`)
accepted the proof, with the same key: a keyed digest of the proof key's thumbprint and the
``jti``, keyed by the fleet's shared digest key so that every replica names a proof alike.
:meth:`RedisReplayStore.claim` is ``SET NX PX`` on a name keyed again by the fleet secret (the key
never appears in Redis as given). When Redis fails, or its breaker is open, the replica's own
answer stands (a replay on the same replica is still refused; one on another replica is not
caught until Redis is back): a DPoP request never fails for the shared store alone.
"""

from __future__ import annotations

import math
import time

from sidecar.fleet.store import Fleet, RedisDown


class RedisReplayStore:
    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet

    @property
    def secret(self) -> bytes:
        return self._fleet.digest_key  # derived from fleet.secret_file: the same on every replica

    async def claim(self, key: bytes, until: float) -> bool:
        """True unless another replica claimed ``key`` before the wall-clock ``until``."""
        fleet = self._fleet
        if not fleet.breaker.allows():
            fleet.metrics.event("bypass")
            return True
        ttl_ms = max(1, math.ceil((until - time.time()) * 1000))
        try:
            stored = await fleet.call(fleet.redis.set(fleet.names.replay(key), b"1", nx=True, px=ttl_ms))
        except RedisDown:
            return True  # the replica's own store already refused a replay it saw
        return bool(stored)
