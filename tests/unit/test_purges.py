"""What a purge names and what a replica remembers of it (sidecar/core/purges.py)."""

from __future__ import annotations

import tracemalloc

import pytest

from sidecar.core.purges import Purge, PurgeMemory
from sidecar.core.revocation import Selector
from sidecar.core.token_info import INACTIVE, TokenInfo

KEY, OTHER = b"k" * 16, b"o" * 16


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("doc", [
    {"by": "key", "v": KEY.hex()}, {"by": "token_hash", "v": "0123456789ab"}, {"by": "all", "v": ""},
])
def test_a_selector_travels_and_comes_back_unchanged(doc: dict[str, str]) -> None:
    selector = Purge.from_wire(doc)
    assert selector is not None and selector.wire() == doc


@pytest.mark.parametrize("doc", [
    {"by": "key", "v": "00"}, {"by": "token_hash", "v": "0123456789AB"}, {"by": "all", "v": "x"},
    {"by": "subject", "v": "alice"}, {"by": "key"}, {"by": "all", "v": "", "extra": 1}, ["all"], None,
    {"by": 1, "v": ""}, {"by": "token_hash", "v": "0123456789ab\n"},
])
def test_a_malformed_selector_is_refused(doc: object) -> None:
    assert Purge.from_wire(doc) is None


def test_a_selector_names_its_token_by_key_or_hash_and_all_names_every_token() -> None:
    assert Purge.token(KEY).matches(KEY, "aaaaaaaaaaaa") and not Purge.token(KEY).matches(OTHER, "a")
    assert Purge.hash("aaaaaaaaaaaa").matches(OTHER, "aaaaaaaaaaaa")
    assert not Purge.hash("aaaaaaaaaaaa").matches(KEY, "bbbbbbbbbbbb")
    assert Purge.everything().matches(KEY, "bbbbbbbbbbbb")


def test_an_answer_begun_before_a_purge_that_names_it_is_refused_and_one_begun_after_is_not() -> None:
    clock = Clock()
    memory = PurgeMemory(300.0, clock=clock)
    memory.remember(Purge.hash("aaaaaaaaaaaa"))
    assert memory.refuses(KEY, "aaaaaaaaaaaa", INACTIVE, began=999.0)
    assert not memory.refuses(KEY, "aaaaaaaaaaaa", INACTIVE, began=1000.5)
    assert memory.refuses(KEY, "aaaaaaaaaaaa", INACTIVE, began=1000.5, skew=1.0)  # a clock ahead by a second
    assert not memory.refuses(OTHER, "bbbbbbbbbbbb", INACTIVE, began=999.0)  # not named


def test_a_purge_of_all_and_a_resubscription_raise_the_floor() -> None:
    clock = Clock()
    memory = PurgeMemory(300.0, clock=clock)
    memory.remember(Purge.everything())
    assert memory.floor == 1000.0 and len(memory) == 0
    assert memory.refuses(OTHER, "bbbbbbbbbbbb", INACTIVE, began=999.9)
    clock.now = 1010.0
    memory.raise_floor()
    assert memory.refuses(OTHER, "bbbbbbbbbbbb", INACTIVE, began=1009.0)


def test_a_purge_is_forgotten_only_after_every_answer_begun_before_it_has_expired() -> None:
    clock = Clock()
    memory = PurgeMemory(300.0, clock=clock)
    memory.remember(Purge.token(KEY))
    clock.now += 299.0
    memory.remember(Purge.token(OTHER))
    assert memory.refuses(KEY, "x", INACTIVE, began=999.0)
    clock.now += 2.0
    memory.remember(Purge.hash("cccccccccccc"))
    assert len(memory) == 2 and not memory.refuses(KEY, "x", INACTIVE, began=999.0)


def test_a_full_memory_forgets_nothing_it_grows_stricter() -> None:
    clock = Clock()
    memory = PurgeMemory(300.0, max_entries=2, clock=clock)
    for index in range(3):
        clock.now += 1.0
        memory.remember(Purge.hash(f"{index:012x}"))
    assert len(memory) == 2 and memory.floor == 1001.0  # the oldest folded into the floor
    assert memory.refuses(KEY, "000000000000", INACTIVE, began=1000.5)
    assert memory.refuses(KEY, "ffffffffffff", INACTIVE, began=1000.5)  # stricter: refused too


@pytest.mark.parametrize("selector", [
    Selector("client_id", "app"), Selector("sub", "alice"), Selector("jti", "j1"),
    Selector("email", "alice@example.com"), Selector("key", KEY.hex()),
    # as a Security Event Token names them: every kind scoped to the SET's issuer
    Selector("client_id", "app", "https://idp"), Selector("sub", "alice", "https://idp"),
    Selector("jti", "j1", "https://idp"), Selector("email", "alice@example.com", "https://idp"),
    Selector("key", KEY.hex(), "https://idp"),
])
def test_an_answer_begun_before_a_revocation_that_names_it_is_refused_and_one_begun_after_is_not(
    selector: Selector
) -> None:
    clock = Clock()
    memory = PurgeMemory(300.0, clock=clock)
    memory.revoked(selector)
    alice = TokenInfo(active=True, client_id="app", sub="alice", iss="https://idp", jti="j1",
                      username="alice@example.com", iat=0)
    assert memory.refuses(KEY, "x", alice, began=999.0)
    assert not memory.refuses(KEY, "x", alice, began=1000.5)
    bob = TokenInfo(active=True, client_id="other", sub="bob", iss="https://idp", jti="j2", iat=0)
    assert not memory.refuses(OTHER, "x", bob, began=999.0)  # not named
    clock.now += 301.0
    memory.remember(Purge.hash("cccccccccccc"))  # prunes: kept as long as a purge, no longer
    assert not memory.refuses(KEY, "x", alice, began=999.0)


@pytest.mark.parametrize("kind, value", [("sub", "alice"), ("client_id", "app"), ("jti", "j1"), ("key", KEY.hex())])
def test_a_revocation_by_another_issuer_does_not_name_this_token(kind: str, value: str) -> None:
    memory = PurgeMemory(300.0, clock=Clock())
    memory.revoked(Selector(kind, value, "https://elsewhere"))
    alice = TokenInfo(active=True, sub="alice", client_id="app", jti="j1", iss="https://idp", iat=0)
    assert not memory.refuses(KEY, "x", alice, began=999.0)


def test_remembered_revocations_cost_the_same_bytes_whatever_the_length_of_their_values() -> None:
    memory = PurgeMemory(300.0, clock=Clock())
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(1000):
            memory.revoked(Selector("sub", f"{index:04d}" + "x" * 1020))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(memory) == 1000 and grown < 1000 * 300  # a 1,024-character value is not kept
