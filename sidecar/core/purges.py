"""What a purge names (a :class:`Purge`), and what a replica remembers of the purges it has seen
(:class:`PurgeMemory`), so that an answer given before a purge is never used after it.

A purge drops cached answers: one token (``key``: its keyed digest), every token with a
``token_hash`` (the 12-hex log value), or ``all`` — answers, not tokens: the IdP's next answer
for the token stands. (A *revocation*, core/revocation.py, names tokens by their claims and
refuses them for a while, whatever the IdP answers.) A purge travels as ``{"by": …, "v": …}``
(the fleet's channel), is checked strictly on the way in, and names an answer by what the cache
knows of it (its key, its hash, its :class:`TokenInfo`): a new kind is one more entry in
``_KINDS`` and one more purge in :meth:`Purge.naming`.

Deleting an answer is not enough where answers are shared: a copy made before the purge (a value
saved from Redis and written back, a fill that raced the purge) would be used again. So a replica
remembers each purge with the wall-clock time it learnt of it, for as long as an answer given
before it may live (``cache.max_ttl`` plus the IdP call), and refuses any shared answer whose
IdP call began before a purge that names it (:meth:`PurgeMemory.refuses`). The memory is
bounded; when full, its oldest purge is folded into :attr:`PurgeMemory.floor`, the time before
which every shared answer is refused (so it forgets nothing it must remember, it only grows
stricter). A replica that may have missed purges (just started, or resubscribed) raises the
floor to the present.

Revocations (a :class:`~sidecar.core.revocation.Selector`: a ``jti``, subject, e-mail, client or
token) are remembered here the same way and as long, by a 16-byte digest whatever the length of
their value (:meth:`PurgeMemory.revoked`): the cache's own memory of them (``events.remember``,
``events.max_revocations``) may end, or drop the oldest, while an answer given before them still
lives in Redis.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from sidecar.core.revocation import Selector, values
from sidecar.core.token_info import TokenInfo

Kind = Literal["key", "token_hash", "all"]
_KINDS: dict[str, re.Pattern[str]] = {
    "key": re.compile(r"[0-9a-f]{32}\Z"),  # the cache key (a 16-byte BLAKE2b digest), hex
    "token_hash": re.compile(r"[0-9a-f]{12}\Z"),
    "all": re.compile(r"\Z"),
}
MAX_REMEMBERED = 65_536  # purges remembered by name; past it the oldest is folded into the floor


@dataclass(frozen=True, slots=True)
class Purge:
    """The answers a purge drops. Build with :meth:`token`, :meth:`hash`, :meth:`everything` or
    :meth:`from_wire` (which refuses anything malformed)."""

    kind: Kind
    value: str = ""

    @classmethod
    def token(cls, key: bytes) -> Purge:
        return cls("key", key.hex())

    @classmethod
    def hash(cls, hashed: str) -> Purge:
        return cls("token_hash", hashed)

    @classmethod
    def everything(cls) -> Purge:
        return cls("all")

    @classmethod
    def from_wire(cls, doc: Any) -> Purge | None:
        """``{"by": kind, "v": value}`` as :meth:`wire` writes it; None unless exactly that."""
        if not isinstance(doc, dict) or set(doc) - {"by", "v"}:
            return None
        kind, value = doc.get("by"), doc.get("v", "")
        pattern = _KINDS.get(kind) if isinstance(kind, str) else None
        if pattern is None or not isinstance(value, str) or not pattern.match(value):
            return None
        return cls(kind, value)  # type: ignore[arg-type]  # kind is one of _KINDS

    def wire(self) -> dict[str, str]:
        return {"by": self.kind, "v": self.value}

    @staticmethod
    def naming(key: bytes, hashed: str, info: TokenInfo | None = None) -> tuple[Purge, ...]:
        """Every purge (``all`` aside) that names the answer for the token with ``key`` and
        ``hashed`` (and, for kinds that look at claims, ``info``)."""
        return Purge("key", key.hex()), Purge("token_hash", hashed)

    def matches(self, key: bytes, hashed: str, info: TokenInfo | None = None) -> bool:
        """Whether this purge names the answer for the token with ``key`` and ``hashed``."""
        return self.kind == "all" or self in Purge.naming(key, hashed, info)


class PurgeMemory:
    """The purges one replica has seen, each with the time it learnt of it, kept ``keep`` seconds."""

    __slots__ = ("_clock", "_keep", "_max", "_seen", "floor")

    def __init__(self, keep: float, *, max_entries: int = MAX_REMEMBERED,
                 clock: Callable[[], float] = time.time) -> None:
        self._keep = keep
        self._max = max_entries
        self._clock = clock
        # oldest first; a revocation by the digest of its selector (16 bytes, whatever its value's length)
        self._seen: OrderedDict[Purge | bytes, float] = OrderedDict()
        self.floor = 0.0  # wall clock: every shared answer begun before it is refused

    def __len__(self) -> int:
        return len(self._seen)

    def remember(self, purge: Purge) -> None:
        """A purge learnt now (sent from here, or received)."""
        now = self._clock()
        if purge.kind == "all":
            self.raise_floor(now)
            return
        self._add(purge, now)

    def revoked(self, selector: Selector) -> None:
        """A revocation learnt now (sent from here, or received): refused like a purge."""
        self._add(_digest(selector), self._clock())

    def _add(self, purge: Purge | bytes, now: float) -> None:
        self._seen.pop(purge, None)
        self._seen[purge] = now
        self._prune(now)
        while len(self._seen) > self._max:
            _, at = self._seen.popitem(last=False)
            self.floor = max(self.floor, at)  # stricter, never forgetful

    def raise_floor(self, at: float | None = None) -> None:
        """Refuse every shared answer begun before ``at`` (default: now): purges may have been
        missed before it."""
        self.floor = max(self.floor, self._clock() if at is None else at)

    def refuses(self, key: bytes, hashed: str, info: TokenInfo, began: float, skew: float = 0.0) -> bool:
        """Whether a shared answer whose IdP call began at ``began`` (the filling replica's wall
        clock, which may be ``skew`` seconds ahead of ours) may predate a purge that names it."""
        began -= skew
        if began < self.floor:
            return True
        seen = self._seen
        if any(seen.get(purge, 0.0) > began for purge in Purge.naming(key, hashed, info)):
            return True
        return any(seen.get(_digest(selector), 0.0) > began for selector in _selectors(key, info))

    def _prune(self, now: float) -> None:
        seen = self._seen
        while seen:
            purge, at = next(iter(seen.items()))
            if at > now - self._keep:
                break
            del seen[purge]


def _selectors(key: bytes, info: TokenInfo) -> list[Selector]:
    """Every revocation that names the token of ``key`` (``info``): by token, and by each claim,
    each without an issuer (an operator's purge) and with the token's own (a Security Event Token
    names every kind within its issuer; an operator's ``sub`` may name one)."""
    plain = [("key", key.hex()), *values(info)]
    named = [Selector(kind, value) for kind, value in plain]
    if info.iss is not None:
        named += [Selector(kind, value, info.iss) for kind, value in plain]
    return named


def _digest(selector: Selector) -> bytes:
    return hashlib.blake2b(f"{selector.kind}\0{selector.iss or ''}\0{selector.value}".encode(),
                           digest_size=16).digest()
