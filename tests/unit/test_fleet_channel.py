"""The fleet's channel on its own (sidecar/fleet/channel.py): what a message must be to be heard, and
when a replica concludes it cannot read its fleet (tests/fleet/test_redis_writer.py: on Redis)."""

from __future__ import annotations

import pytest

from sidecar.fleet.channel import MAX_AGE, Agreement, Channel, Foreign
from sidecar.fleet.seal import Names, Sealer, Tampered

SECRET, OTHER_SECRET, KEY, OTHER_KEY = b"s" * 40, b"t" * 40, b"k" * 40, b"l" * 40


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def channel(clock: Clock, secret: bytes = SECRET, key: bytes = KEY) -> Channel:
    return Channel(Names(secret, "p:"), Sealer(key), clock)


def test_a_message_is_heard_once_and_only_while_fresh() -> None:
    clock = Clock()
    sender, receiver = channel(clock), channel(clock)
    data = sender.seal("purge", p={"by": "all", "v": ""})
    message = receiver.open(data)
    assert (message.kind, message.sender, message.body) == ("purge", sender.sender, {"p": {"by": "all", "v": ""}})
    with pytest.raises(Tampered, match="replay"):
        receiver.open(data)
    late = sender.seal("beat")
    clock.now += MAX_AGE + 1
    with pytest.raises(Tampered, match="too long ago"):
        channel(clock).open(late)


def test_another_seal_key_or_fleet_secret_is_foreign_and_junk_is_tampered() -> None:
    clock = Clock()
    receiver = channel(clock)
    with pytest.raises(Foreign) as key:
        receiver.open(channel(clock, key=OTHER_KEY).seal("beat"))
    with pytest.raises(Foreign) as secret:
        receiver.open(channel(clock, secret=OTHER_SECRET).seal("beat"))
    assert (key.value.reason, secret.value.reason) == ("fleet_seal_key_mismatch", "fleet_secret_mismatch")
    for junk in (b"", b"{}", b"\x02" + b"\x00" * 80, "text", b"x" * 2000):  # (an unknown key id is foreign)
        with pytest.raises(Tampered):
            receiver.open(junk)


def test_a_newcomer_that_hears_only_disagreement_is_the_odd_one_until_a_peer_agrees() -> None:
    clock = Clock()
    newcomer = Agreement(clock)
    newcomer.subscribed()
    assert newcomer.problem() == "fleet_joining"
    newcomer.foreign("fleet_seal_key_mismatch")
    clock.now += 5
    assert newcomer.problem() == "fleet_seal_key_mismatch"
    newcomer.peer()
    assert newcomer.problem() is None


def test_a_replica_that_agreed_or_heard_no_one_stays_ready_whatever_it_hears_later() -> None:
    clock = Clock()
    agreed, lone = Agreement(clock), Agreement(clock)
    agreed.subscribed()
    lone.subscribed()
    agreed.peer()
    agreed.foreign("fleet_seal_key_mismatch")  # a newcomer with the wrong key, while joining
    assert agreed.problem() is None
    clock.now += 5
    assert lone.problem() is None  # no one to disagree with
    lone.foreign("fleet_secret_mismatch")  # a newcomer, after this replica joined
    assert lone.problem() is None


def test_readiness_never_waits_for_redis() -> None:
    clock = Clock()
    waiting = Agreement(clock)
    clock.now += 2  # never subscribed: Redis is away
    assert waiting.problem() is None
    waiting.subscribed()  # Redis is back: listening again, ready meanwhile
    assert waiting.problem() is None
    waiting.foreign("fleet_seal_key_mismatch")
    assert waiting.problem() == "fleet_seal_key_mismatch"
