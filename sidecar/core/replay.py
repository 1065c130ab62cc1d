"""DPoP replay protection (RFC 9449 §11.1): each proof's ``jti`` is accepted once while the proof
could still be accepted (until ``iat + dpop.iat_window``).

:class:`ReplayStore` is the interface: one call, ``claim``, that answers True only the first time
a key is claimed before it expires. :class:`LocalReplayStore` is the bounded in-process store;
:class:`~sidecar.core.ports.SharedReplay` the fleet's (``SET key 1 NX PX`` in Redis), asked after it
with the same key (an await: a DPoP request in a fleet takes one awaited step after its
synchronous checks).
Unlike the token cache the local store never evicts a live key to make room (that would let the
evicted proof be replayed): when it is full of live keys it refuses, and the decision denies
(fail closed). So that one client cannot fill it for the others, each proof key (its thumbprint,
the ``owner``) holds at most ``dpop.replay_max_share`` of it: past that, that client's new proofs
are refused with 429 ``rate_limited`` until its own older ones expire, and every other client
goes on.

:class:`SeenProofs` is what outlives one configuration: the proofs accepted so far and the secret
that names them (and signs the server nonces). A reload hands it to the new parts, so that a proof
accepted before a SIGHUP is still a replay after it, and a nonce issued before it still counts.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from sidecar.core.errors import RateLimited


class StoreFull(Exception):
    """No room for another live key: the proof cannot be proven fresh."""


class ReplayStore(Protocol):
    def claim(self, key: bytes, until: float, owner: str = "") -> bool:
        """True the first time ``key`` is claimed; False while an earlier claim is live.

        ``until`` is a wall-clock deadline (``time.time()``); ``owner`` the client the key is
        charged to (the proof key's thumbprint). Raises :class:`StoreFull` when the key cannot be
        remembered, ``RateLimited`` when ``owner`` holds its whole share.
        """
        ...


class LocalReplayStore:
    """Bounded by ``max_entries``, and each owner by ``max_share`` of it; expired keys are dropped
    oldest first as new ones arrive."""

    __slots__ = ("_clock", "_data", "_held", "_order", "_share", "max_entries")

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.time, *, max_share: float = 1.0) -> None:
        self.max_entries = max_entries
        self._share = max(1, math.floor(max_entries * max_share + 1e-9))
        self._clock = clock
        self._data: dict[bytes, float] = {}
        self._order: deque[tuple[float, bytes, str]] = deque()
        self._held: dict[str, int] = {}  # live keys per owner

    def __len__(self) -> int:
        return len(self._data)

    def resize(self, max_entries: int, max_share: float) -> None:
        """New bounds (a reload): the live keys stay; past a smaller bound new claims wait for them to expire."""
        self.max_entries = max_entries
        self._share = max(1, math.floor(max_entries * max_share + 1e-9))

    def claim(self, key: bytes, until: float, owner: str = "") -> bool:
        now = self._clock()
        data = self._data
        seen = data.get(key)
        if seen is not None and seen > now:
            return False
        self._expire(now)
        if key in data:  # expired, not yet dropped: replaced (a key has one owner: its thumbprint's)
            del data[key]
            self._release(owner)
        if len(data) >= self.max_entries:
            # Keys leave in arrival order; iat varies within the window, so a key may outlive its
            # deadline by at most one window before it goes: a bounded cost, no scan per request.
            raise StoreFull(f"{len(data)} live proofs")
        held = self._held.get(owner, 0)
        if held >= self._share:
            raise RateLimited(f"this DPoP key holds {held} live proofs (dpop.replay_max_share)")
        data[key] = until
        self._order.append((until, key, owner))
        self._held[owner] = held + 1
        return True

    def _expire(self, now: float) -> None:
        data, order = self._data, self._order
        while order and (order[0][0] <= now or data.get(order[0][1]) != order[0][0]):
            deadline, old, owner = order.popleft()
            if data.get(old) == deadline:
                del data[old]
                self._release(owner)

    def _release(self, owner: str) -> None:
        held = self._held.get(owner, 0) - 1
        if held > 0:
            self._held[owner] = held
        else:
            self._held.pop(owner, None)


class SeenProofs:
    """The local replay store and the secret of one process, kept across reloads (see the module doc)."""

    __slots__ = ("secret", "store")

    def __init__(self, store: LocalReplayStore, secret: bytes | None = None) -> None:
        self.store = store
        self.secret = secret or os.urandom(32)
