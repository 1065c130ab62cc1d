"""Who may call ``POST /purge``, and what a wrong secret costs — never the right secret's holder.

- Only peers in ``server.purge_peers`` (loopback by default: the pod's own containers) reach it.
- The presented secret is compared first, in constant time, and **the right secret is always
  served**: whatever anyone else on the holder's address (a NAT, the pod's loopback) sends, the
  holder is never locked out nor rate-limited.
- A wrong secret: a token bucket bounds the 401s of every peer together (``server.purge_rate``
  per second, ``server.purge_burst`` at once), and each failure locks its peer's further wrong
  attempts out for ``purge_backoff`` seconds, doubled with each further failure up to
  ``purge_backoff_max``; they are answered ``429`` with ``Retry-After``, logged once a second.

Since a wrong secret is thus always told apart from the right one, what stops guessing is the
secret's strength: at least 32 random characters (``openssl rand -base64 32``, about 190 bits;
a shorter one is warned about at start) make any guessing rate useless. Peer records are bounded
(oldest dropped first), so memory does not grow with source addresses.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.support.ratelimit import TokenBucket

MAX_PEERS = 4096
LOG_EVERY = 1.0  # seconds between log lines about refused attempts (a flood of them is cheap)


@dataclass
class _Peer:
    failures: int = 0
    locked_until: float = 0.0


class PurgeGuard:
    def __init__(self, rate: float, burst: int, backoff: float, backoff_max: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._backoff, self._backoff_max = backoff, backoff_max
        self._clock = clock
        self._bucket = TokenBucket(rate, burst, clock())
        self._peers: OrderedDict[str, _Peer] = OrderedDict()
        self._logged: dict[str, tuple[float, int]] = {}

    def wait(self, peer: str) -> float:
        """After a wrong secret from ``peer``: 0 when it may be answered 401 now (one attempt is
        taken from the bucket); else the seconds its wrong attempts are refused for."""
        now = self._clock()
        record = self._peers.get(peer)
        if record is not None and record.locked_until > now:
            return record.locked_until - now
        return self._bucket.take(now)

    def failed(self, peer: str) -> float:
        """Record a failed authentication; the lockout it starts, in seconds."""
        record = self._peers.pop(peer, None) or _Peer()
        record.failures += 1
        lockout = min(self._backoff * (1 << min(record.failures - 1, 62)), self._backoff_max)
        record.locked_until = self._clock() + lockout
        self._peers[peer] = record  # most recent last
        while len(self._peers) > MAX_PEERS:
            self._peers.popitem(last=False)
        return lockout

    def quiet(self, reason: str) -> int | None:
        """Refusals to log: the count since the last line, at most one line per second per reason."""
        now = self._clock()
        last, count = self._logged.get(reason, (-LOG_EVERY, 0))
        if now - last < LOG_EVERY:
            self._logged[reason] = (last, count + 1)
            return None
        self._logged[reason] = (now, 0)
        return count + 1

    def failures(self, peer: str) -> int:
        record = self._peers.get(peer)
        return record.failures if record else 0


def retry_after(seconds: float) -> str:
    """Whole seconds, at least 1 (RFC 9110 §10.2.3 delay-seconds)."""
    return str(max(1, math.ceil(seconds)))
