"""A fleet-wide replay store for DPoP proofs (RFC 9449 §11.1): a proof's ``jti`` is accepted once
across every replica.

:meth:`RedisReplayStore.claim` is ``SET NX PX`` on a keyed name (the fleet secret: the caller's
key never appears in Redis as given). The replica also remembers each key itself, so a replay on
the same replica is refused even when Redis is down; when Redis fails (or its breaker is open)
the local answer alone decides, as without a fleet. The local memory never evicts a live key to
make room (that would let the evicted proof be replayed): full of live keys, it refuses (False:
the caller denies, fail closed).
"""

from __future__ import annotations

import math
import time
from collections import deque

from sidecar.fleet.store import Fleet, RedisDown


class LocalClaims:
    """Keys with a wall-clock deadline, at most ``max_entries`` live ones."""

    __slots__ = ("_data", "_order", "max_entries")

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: dict[bytes, float] = {}
        self._order: deque[tuple[float, bytes]] = deque()

    def __len__(self) -> int:
        return len(self._data)

    def claim(self, key: bytes, until: float, now: float) -> bool:
        data, order = self._data, self._order
        seen = data.get(key)
        if seen is not None and seen > now:
            return False
        while order and order[0][0] <= now:  # arrival order: a key may outlive its deadline a little
            deadline, old = order.popleft()
            if data.get(old) == deadline:
                del data[old]
        if len(data) >= self.max_entries:
            return False
        data[key] = until
        order.append((until, key))
        return True


class RedisReplayStore:
    def __init__(self, fleet: Fleet, max_local: int = 100_000) -> None:
        self._fleet = fleet
        self._local = LocalClaims(max_local)

    async def claim(self, key: bytes, until: float) -> bool:
        """True the first time ``key`` is claimed in the fleet before the wall-clock ``until``;
        False for a replay (or when this replica cannot remember one more live key)."""
        now = time.time()
        if not self._local.claim(key, until, now):
            return False
        fleet = self._fleet
        if not fleet.breaker.allows():
            fleet.metrics.event("bypass")
            return True
        try:
            stored = await fleet.call(fleet.redis.set(fleet.names.replay(key), b"1", nx=True,
                                                      px=max(1, math.ceil((until - now) * 1000))))
        except RedisDown:
            return True  # the local answer: a replay on this replica is still refused
        return bool(stored)

    async def first_use(self, key: bytes, ttl: float) -> bool:
        """:meth:`claim` for ``ttl`` seconds from now."""
        return await self.claim(key, time.time() + ttl)
