"""DPoP replay protection (RFC 9449 §11.1): each proof's ``jti`` is accepted once while the proof
could still be accepted (until ``iat + dpop.iat_window``).

:class:`ReplayStore` is the interface: one call, ``claim``, that answers True only the first time
a key is claimed before it expires. :class:`LocalReplayStore` is the bounded in-process store;
:class:`~sidecar.core.ports.SharedReplay` the fleet's (``SET key 1 NX PX`` in Redis), asked after it
with the same key (an await: a DPoP request in a fleet takes one awaited step after its
synchronous checks).
Unlike the token cache the local store never evicts a live key to make room (that would let the
evicted proof be replayed): when it is full of live keys it refuses, and the decision denies
(fail closed).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Protocol


class StoreFull(Exception):
    """No room for another live key: the proof cannot be proven fresh."""


class ReplayStore(Protocol):
    def claim(self, key: bytes, until: float) -> bool:
        """True the first time ``key`` is claimed; False while an earlier claim is live.

        ``until`` is a wall-clock deadline (``time.time()``); raises :class:`StoreFull`
        when the key cannot be remembered.
        """
        ...


class LocalReplayStore:
    """Bounded by ``max_entries``; expired keys are dropped oldest first as new ones arrive."""

    __slots__ = ("_clock", "_data", "_order", "max_entries")

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._data: dict[bytes, float] = {}
        self._order: deque[tuple[float, bytes]] = deque()

    def __len__(self) -> int:
        return len(self._data)

    def claim(self, key: bytes, until: float) -> bool:
        now = self._clock()
        data, order = self._data, self._order
        seen = data.get(key)
        if seen is not None and seen > now:
            return False
        while order and (order[0][0] <= now or data.get(order[0][1]) != order[0][0]):
            deadline, old = order.popleft()
            if data.get(old) == deadline:
                del data[old]
        if len(data) >= self.max_entries:
            # Keys leave in arrival order; iat varies within the window, so a key may outlive its
            # deadline by at most one window before it goes: a bounded cost, no scan per request.
            raise StoreFull(f"{len(data)} live proofs")
        data[key] = until
        order.append((until, key))
        return True
