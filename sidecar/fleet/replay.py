"""A fleet-wide replay store for DPoP proofs (RFC 9449 §11.1): a proof's ``jti`` is accepted once
across every replica.

:meth:`RedisReplayStore.first_use` is ``SET NX PX`` on a keyed name (the fleet secret; the
caller's key, e.g. a digest of the ``jti``, never appears in Redis). The replica also remembers
each key itself (bounded), so a replay on the same replica is caught even when Redis is down;
when Redis fails (or its breaker is open) the answer is the local one alone, as without a fleet.
"""

from __future__ import annotations

import math
import time

from sidecar.fleet.store import Fleet, RedisDown
from sidecar.support.ttl_cache import TtlStore


def _until(_key: bytes, deadline: float, _now: float) -> float:
    return deadline


class RedisReplayStore:
    def __init__(self, fleet: Fleet, max_local: int = 100_000) -> None:
        self._fleet = fleet
        self._local: TtlStore[bytes, float] = TtlStore(max_local, _until, time.monotonic)

    async def first_use(self, key: bytes, ttl: float) -> bool:
        """True the first time ``key`` is seen in the fleet within ``ttl`` seconds; False for a replay."""
        if self._local.get(key) is not None:
            return False
        self._local[key] = time.monotonic() + ttl
        fleet = self._fleet
        if not fleet.breaker.allows():
            fleet.metrics.event("bypass")
            return True
        try:
            stored = await fleet.call(fleet.redis.set(fleet.names.replay(key), b"1", nx=True,
                                                       px=max(1, math.ceil(ttl * 1000))))
        except RedisDown:
            return True  # the local answer: a replay on this replica is still caught
        return bool(stored)
