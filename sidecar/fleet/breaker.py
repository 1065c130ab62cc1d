"""A small circuit breaker for Redis: after N consecutive failures Redis is skipped for a while,
then one call tries it again (half-open); a success closes the breaker."""

from __future__ import annotations

import time
from collections.abc import Callable


class Breaker:
    __slots__ = ("_count", "_open_for", "_threshold", "_timer", "_until")

    def __init__(self, failures: int, open_seconds: float, timer: Callable[[], float] = time.monotonic) -> None:
        self._threshold = failures
        self._open_for = open_seconds
        self._timer = timer
        self._count = 0
        self._until = 0.0  # while the timer is below it, Redis is skipped

    @property
    def open(self) -> bool:
        return self._count >= self._threshold

    def allows(self) -> bool:
        if self._count < self._threshold:
            return True
        now = self._timer()
        if now < self._until:
            return False
        self._until = now + self._open_for  # half-open: this call tries, the others keep skipping
        return True

    def success(self) -> None:
        self._count = 0

    def failure(self) -> None:
        self._count += 1
        if self._count == self._threshold:
            self._until = self._timer() + self._open_for
