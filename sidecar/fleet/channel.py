"""The fleet's channel (``<prefix>fleet``): sealed messages every replica publishes and hears —
purges, revocations and heartbeats — and what they tell a replica about the fleet it is in.

A message is AES-256-GCM sealed (seal.py) with the channel's name as associated data, and says
who sent it (a random id per process), when (wall clock), a nonce, and the fleet tag (a digest of
the fleet secret). A Redis writer can publish, so a replica refuses, besides what does not open:

- a message sent more than :data:`MAX_AGE` seconds from now, or one it has already heard (the
  sender and nonce are remembered as long): an authentic purge replayed later is refused;
- anything larger than :data:`MAX_MESSAGE` bytes.

**Agreement** (:class:`Agreement`): a message that is sealed under a key this replica does not
hold, or that opens but carries another fleet tag, comes from a replica with another seal key or
another fleet secret — or from a writer imitating one. A replica that, in its first
:data:`JOIN` seconds, hears such messages and no peer that agrees with it is the odd one (a
rotation gone wrong): it is not ready (``fleet_seal_key_mismatch``, ``fleet_secret_mismatch``)
until a peer that agrees speaks. A replica that has heard an agreeing peer, or heard no one, is
ready, and later disagreement only logs: a newcomer with the wrong key cannot take the fleet
down, and nothing a writer publishes makes a replica with agreeing peers unready.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sidecar.fleet.seal import Names, Sealer, Tampered

log = logging.getLogger("sidecar.fleet")
MAX_MESSAGE = 8192  # a revocation carries up to four selectors of up to 1024 characters
MAX_AGE = 30.0  # seconds a message stays acceptable; also how long its nonce is remembered
MAX_HEARD = 65_536  # (sender, nonce) pairs remembered; the oldest go first
JOIN = 1.0  # seconds in which a new replica learns whether the fleet agrees with it
KINDS = frozenset({"purge", "revoke", "beat"})


class Foreign(Exception):
    """A message from a replica of another fleet (or imitating one): ``reason`` says which part
    differs (``fleet_seal_key_mismatch`` or ``fleet_secret_mismatch``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Message:
    kind: str  # "purge", "revoke" or "beat"
    sender: str
    body: dict[str, Any]  # what the kind carries: a purge ("p"), revocations ("r", "at"), a hello ("h")


class Channel:
    """Seals this replica's messages and opens the fleet's."""

    def __init__(self, names: Names, sealer: Sealer, clock: Callable[[], float] = time.time) -> None:
        self.name = names.channel
        self._aad = names.channel.encode()
        self._tag = names.tag
        self._sealer = sealer
        self._clock = clock
        self.sender = os.urandom(8).hex()
        self._heard: OrderedDict[tuple[str, str], float] = OrderedDict()

    def seal(self, kind: str, **body: Any) -> bytes:
        doc = {"k": kind, "s": self.sender, "t": self._clock(), "n": os.urandom(8).hex(), "f": self._tag, **body}
        return self._sealer.seal(self._aad, json.dumps(doc, separators=(",", ":")).encode())

    def open(self, data: Any) -> Message:
        """The message; raises :class:`Foreign` (another fleet's) or ``Tampered`` (anything else
        refused: not ours, malformed, too old, heard before)."""
        if not isinstance(data, bytes) or len(data) > MAX_MESSAGE:
            raise Tampered("not a fleet message")
        try:
            plain = self._sealer.open(self._aad, data)
        except Tampered as exc:
            if str(exc) == "unknown key id":
                raise Foreign("fleet_seal_key_mismatch") from None
            raise
        try:
            doc = json.loads(plain)
        except (ValueError, RecursionError):
            raise Tampered("not JSON") from None
        if not isinstance(doc, dict) or doc.get("f") != self._tag:
            raise Foreign("fleet_secret_mismatch")
        kind, sender, sent, nonce = doc.pop("k", None), doc.pop("s", None), doc.pop("t", None), doc.pop("n", None)
        doc.pop("f")
        if kind not in KINDS or not isinstance(sender, str) or not isinstance(nonce, str):
            raise Tampered("not a fleet message")
        if isinstance(sent, bool) or not isinstance(sent, int | float) or not math.isfinite(sent):
            raise Tampered("t: not a time")
        now = self._clock()
        if abs(now - sent) > MAX_AGE:
            raise Tampered("sent too long ago (or ahead)")
        self._remember(sender, nonce, now)
        return Message(kind, sender, doc)

    def _remember(self, sender: str, nonce: str, now: float) -> None:
        heard = self._heard
        while heard:
            oldest, at = next(iter(heard.items()))
            if at > now - MAX_AGE and len(heard) < MAX_HEARD:
                break
            del heard[oldest]
        if (sender, nonce) in heard:
            raise Tampered("heard before: a replay")
        heard[(sender, nonce)] = now


class Agreement:
    """Whether this replica reads its fleet's messages, decided in its first :data:`JOIN` seconds
    on the channel (or, while Redis cannot be reached, of its life: readiness never waits for Redis)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._joining_until = clock() + JOIN  # "fleet_joining" until then (unless decided sooner)
        self._joined_at = self._joining_until  # disagreement heard before then makes this replica the odd one
        self._subscribed = False
        self._agreed = False  # a peer that agrees with us has spoken
        self._foreign: str | None = None  # the disagreement heard while joining
        self._logged = -math.inf

    def subscribed(self) -> None:
        """The channel is heard: the first time, this replica listens for JOIN seconds more (a
        replica that came up while Redis was away is ready meanwhile)."""
        if not self._subscribed:
            self._subscribed = True
            self._joined_at = max(self._joined_at, self._clock() + JOIN)

    def peer(self) -> None:
        """A message from another replica of this fleet opened."""
        if not self._agreed and self._foreign is not None and self._clock() >= self._joined_at:
            log.warning("fleet agrees with this replica again")
        self._agreed = True

    def foreign(self, reason: str) -> None:
        """A message this replica cannot read (another seal key) or from another fleet secret."""
        now = self._clock()
        if now < self._joined_at and not self._agreed:
            self._foreign = reason
        if now - self._logged >= 10.0:  # a flood of them is counted, logged once per 10 s
            self._logged = now
            level = logging.ERROR if self.problem() else logging.WARNING
            log.log(level, "fleet message from another seal key or fleet secret", extra={"reason": reason})

    def problem(self) -> str | None:
        """The readiness reason while this replica cannot count on the fleet's messages."""
        if self._agreed:
            return None
        if self._foreign is not None:
            return self._foreign
        return "fleet_joining" if self._clock() < self._joining_until else None
