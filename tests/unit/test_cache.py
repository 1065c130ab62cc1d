"""Cache: bounded, TTL owned by the cache, errors never cached, single-flight, keyed hash keys,
inactive answers apart from active ones."""

from __future__ import annotations

import asyncio
from typing import Any

from sidecar.config import CacheConfig
from sidecar.core.cache import Entry, TokenCache
from sidecar.core.revocation import Revocations, Selector
from sidecar.core.token_info import INACTIVE, TokenInfo
from sidecar.idp.failures import IdpError, IdpFailure

ACTIVE = TokenInfo(active=True)


class Clock:
    """One fake clock for both the monotonic deadlines and the wall clock of ``exp``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cache_of(clock: Clock | None = None, **config: Any) -> TokenCache:
    clock = clock or Clock()
    return TokenCache(CacheConfig(**{"max_entries": 10, **config}), timer=clock, clock=clock)


def entry(info: TokenInfo = ACTIVE, token_hash: str = "h") -> Entry:
    return Entry(info, None, None, None, token_hash)  # type: ignore[arg-type]  # no headers needed here


async def _value(value: Entry) -> Entry:
    return value


async def test_concurrent_misses_for_one_token_share_one_load() -> None:
    cache = cache_of()
    calls = 0
    release = asyncio.Event()

    async def load() -> Entry:
        nonlocal calls
        calls += 1
        await release.wait()
        return entry()

    key = cache.key("token")
    tasks = [asyncio.create_task(cache.get_or_load(key, load)) for _ in range(100)]
    await asyncio.sleep(0.01)
    release.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1
    assert sorted({kind for _, kind in results}) == ["coalesced", "miss"]
    assert (await cache.get_or_load(key, load))[1] == "hit"


async def test_a_cancelled_waiter_does_not_cancel_the_shared_load() -> None:
    cache = cache_of()
    release = asyncio.Event()

    async def load() -> Entry:
        await release.wait()
        return entry()

    key = cache.key("t")
    first = asyncio.create_task(cache.get_or_load(key, load))
    second = asyncio.create_task(cache.get_or_load(key, load))
    await asyncio.sleep(0.01)
    first.cancel()
    release.set()
    assert (await second)[1] == "coalesced"
    assert cache.get(key) is not None


async def test_errors_reach_every_waiter_and_are_never_cached() -> None:
    cache = cache_of()
    key = cache.key("t")

    async def failing() -> Entry:
        await asyncio.sleep(0.01)
        raise IdpError(IdpFailure.HTTP_5XX, "down", status=500)

    results = await asyncio.gather(*(cache.get_or_load(key, failing) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, IdpError) for r in results)
    assert cache.get(key) is None and len(cache) == 0


async def test_an_active_answer_is_kept_for_max_ttl_when_it_has_no_exp() -> None:
    clock = Clock()
    cache = cache_of(clock, max_ttl=5)
    key = cache.key("t")
    await cache.get_or_load(key, lambda: _value(entry()))
    clock.now += 4.9
    assert cache.get(key) is not None
    clock.now += 0.2
    assert cache.get(key) is None


async def test_an_active_answer_is_never_kept_past_its_exp() -> None:
    clock = Clock()
    cache = cache_of(clock, max_ttl=300)
    key = cache.key("t")
    await cache.get_or_load(key, lambda: _value(entry(TokenInfo(active=True, exp=int(clock.now) + 7))))
    clock.now += 6.9
    assert cache.get(key) is not None
    clock.now += 0.2
    assert cache.get(key) is None


async def test_an_inactive_answer_is_kept_for_the_negative_ttl() -> None:
    clock = Clock()
    cache = cache_of(clock, negative_ttl=2, max_ttl=300)
    key = cache.key("t")
    await cache.get_or_load(key, lambda: _value(entry(INACTIVE)))
    clock.now += 1.9
    got = cache.get(key)
    assert got is not None and not got.info.active
    clock.now += 0.2
    assert cache.get(key) is None


async def test_already_expired_answers_are_not_stored_and_size_is_bounded() -> None:
    clock = Clock()
    cache = cache_of(clock, max_entries=3)
    await cache.get_or_load(cache.key("old"), lambda: _value(entry(TokenInfo(active=True, exp=int(clock.now) - 1))))
    assert len(cache) == 0
    for i in range(10):
        await cache.get_or_load(cache.key(str(i)), lambda: _value(entry()))
    assert len(cache) == 3


async def test_a_flood_of_inactive_answers_never_evicts_a_cached_active_token() -> None:
    cache = cache_of(max_entries=5, negative_max_entries=3)
    valid = cache.key("valid")
    await cache.get_or_load(valid, lambda: _value(entry()))
    for i in range(1000):
        await cache.get_or_load(cache.key(f"random-{i}"), lambda: _value(entry(INACTIVE)))
    assert cache.get(valid) is not None
    assert len(cache) == 1 + 3  # the inactive store holds its own bound


async def test_a_token_that_became_inactive_leaves_the_active_store() -> None:
    clock = Clock()
    cache = cache_of(clock, max_ttl=1)
    key = cache.key("t")
    await cache.get_or_load(key, lambda: _value(entry()))
    clock.now += 2
    await cache.get_or_load(key, lambda: _value(entry(INACTIVE)))
    got = cache.get(key)
    assert got is not None and not got.info.active


async def test_zero_entries_turns_the_cache_off() -> None:
    cache = cache_of(max_entries=0)
    await cache.get_or_load(cache.key("t"), lambda: _value(entry()))
    assert cache.get(cache.key("t")) is None


def test_keys_are_keyed_digests_not_the_token() -> None:
    a, b = cache_of(), cache_of()
    token = "secret-token-value"
    assert a.key(token) == a.key(token)
    assert a.key(token) != b.key(token)  # a per-process key: not a plain hash
    assert token.encode() not in a.key(token) and len(a.key(token)) == 16


async def test_purge_drops_one_entry_and_clear_drops_all() -> None:
    cache = cache_of()
    for t in ("a", "b"):
        await cache.get_or_load(cache.key(t), lambda: _value(entry()))
    assert cache.purge(cache.key("a")) is True
    assert cache.purge(cache.key("a")) is False
    assert cache.clear() == 1


def test_the_revocations_given_are_the_ones_kept_even_while_empty() -> None:
    """``events.remember`` and ``events.max_revocations`` reach the cache through the (empty)
    Revocations the stages build: a default put in their place would remember an hour."""
    clock = Clock()
    cache = TokenCache(CacheConfig(max_entries=10), timer=clock, clock=clock,
                       revocations=Revocations(max_entries=1, remember=0.5, timer=clock))
    alice = TokenInfo(active=True, client_id="alice", iat=0)
    cache.revoke(Selector("client_id", "alice"), at=900.0)
    assert cache.revoked(b"k", alice)
    clock.now += 1.0  # past remember
    assert not cache.revoked(b"k", alice)
    cache.revoke(Selector("client_id", "alice"), at=900.0)
    cache.revoke(Selector("client_id", "bob"), at=900.0)  # past max_entries: the oldest goes
    assert not cache.revoked(b"k", alice)
