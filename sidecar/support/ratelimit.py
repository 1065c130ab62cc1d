"""One token bucket for every rate in the sidecar (new tokens per client source, purge attempts).

``rate`` tokens per second accumulate up to ``burst``; each admitted event spends one. The clock
is the caller's (monotonic seconds), so a bucket is a few floats and holds no timer of its own.
"""

from __future__ import annotations


class TokenBucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        """``rate`` <= 0: unlimited (``take`` always admits)."""
        self.rate = rate
        self.burst = float(burst)
        self.tokens = self.burst
        self.stamp = now

    def take(self, now: float) -> float:
        """Spend one token and return 0.0, or return the seconds until one is there (none spent)."""
        if self.rate <= 0:
            return 0.0
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return (1.0 - self.tokens) / self.rate
        self.tokens -= 1.0
        return 0.0
