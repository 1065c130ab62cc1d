"""One circuit breaker for every dependency that can fail as a whole (the IdP, Redis).

Closed → after ``failures`` consecutive failures → open for
``open_seconds`` (longer when the failure asked for it: a ``Retry-After``) → half-open: one trial
→ closed on success, open again on failure. Who makes the trial differs: Redis lets the next
caller try (:meth:`Breaker.allows`), the IdP sends a background probe (:meth:`Breaker.half_open`,
then :meth:`Breaker.success` or :meth:`Breaker.reopen`). ``failures`` = 0 disables the breaker.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = 0, 1, 2  # also the values of the breaker state gauges


class Breaker:
    __slots__ = ("_count", "_on_change", "_open_seconds", "_threshold", "_timer", "open_until", "state")

    def __init__(self, failures: int, open_seconds: float, *, timer: Callable[[], float] = time.monotonic,
                 on_change: Callable[[int], None] | None = None) -> None:
        self._threshold = failures
        self._open_seconds = open_seconds
        self._timer = timer
        self._on_change = on_change
        self._count = 0
        self.state = CLOSED
        self.open_until = 0.0  # monotonic: no trial before it
        if on_change is not None:
            on_change(CLOSED)

    @property
    def is_open(self) -> bool:
        return self.state != CLOSED

    @property
    def failures(self) -> int:
        """Consecutive failures so far."""
        return self._count

    def allows(self) -> bool:
        """Closed: yes. Open: no until ``open_until``; then this caller makes the trial (half-open)
        and the others keep skipping for another ``open_seconds``."""
        if self.state == CLOSED:
            return True
        now = self._timer()
        if now < self.open_until:
            return False
        self.open_until = now + self._open_seconds
        self._set(HALF_OPEN)
        return True

    def success(self) -> None:
        self._count = 0
        if self.state != CLOSED:
            self._set(CLOSED)

    def failure(self, hold: float = 0.0) -> bool:
        """Count a failure; True when this one opened the breaker. ``hold``: seconds the failure
        asked for (at least ``open_seconds`` is kept)."""
        self._count += 1
        if not self._threshold:
            return False
        if self.state == HALF_OPEN:
            self._set(OPEN)  # the trial failed: open until the deadline its start set
            return False
        if self.state != CLOSED or self._count < self._threshold:
            return False
        self.reopen(hold)
        return True

    def reopen(self, hold: float = 0.0) -> None:
        """Open (again) for ``open_seconds``, or ``hold`` seconds when longer."""
        self.open_until = self._timer() + max(self._open_seconds, hold)
        self._set(OPEN)

    def half_open(self) -> None:
        """A probe is on its way (the IdP's background trial)."""
        self._set(HALF_OPEN)

    def _set(self, state: int) -> None:
        self.state = state
        if self._on_change is not None:
            self._on_change(state)
