"""Cache: bounded, TTL from the entry, errors never cached, single-flight, keyed hash keys."""

from __future__ import annotations

import asyncio

from sidecar.core.cache import Entry, TokenCache
from sidecar.core.errors import IdpFailure, IdpUnavailable
from sidecar.core.token_info import TokenInfo


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(expires: float) -> Entry:
    return Entry(TokenInfo(active=True), {}, None, None, "h", expires)


async def test_concurrent_misses_for_one_token_share_one_load() -> None:
    cache = TokenCache(10)
    calls = 0
    release = asyncio.Event()

    async def load() -> Entry:
        nonlocal calls
        calls += 1
        await release.wait()
        return entry(1e12)

    key = cache.key("token")
    tasks = [asyncio.create_task(cache.get_or_load(key, load)) for _ in range(100)]
    await asyncio.sleep(0.01)
    release.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1
    assert sorted({kind for _, kind in results}) == ["coalesced", "miss"]
    assert (await cache.get_or_load(key, load))[1] == "hit"


async def test_a_cancelled_waiter_does_not_cancel_the_shared_load() -> None:
    cache = TokenCache(10)
    release = asyncio.Event()

    async def load() -> Entry:
        await release.wait()
        return entry(1e12)

    key = cache.key("t")
    first = asyncio.create_task(cache.get_or_load(key, load))
    second = asyncio.create_task(cache.get_or_load(key, load))
    await asyncio.sleep(0.01)
    first.cancel()
    release.set()
    assert (await second)[1] == "coalesced"
    assert cache.get(key) is not None


async def test_errors_reach_every_waiter_and_are_never_cached() -> None:
    cache = TokenCache(10)
    key = cache.key("t")

    async def failing() -> Entry:
        await asyncio.sleep(0.01)
        raise IdpUnavailable(IdpFailure.HTTP_5XX, "down", status=500)

    results = await asyncio.gather(*(cache.get_or_load(key, failing) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, IdpUnavailable) for r in results)
    assert cache.get(key) is None and len(cache) == 0


async def test_entries_expire_at_their_own_deadline() -> None:
    clock = Clock()
    cache = TokenCache(10, timer=clock)
    key = cache.key("t")

    async def load() -> Entry:
        return entry(clock.now + 5)

    await cache.get_or_load(key, load)
    clock.now += 4.9
    assert cache.get(key) is not None
    clock.now += 0.2
    assert cache.get(key) is None


async def test_already_expired_entries_are_not_stored_and_size_is_bounded() -> None:
    clock = Clock()
    cache = TokenCache(3, timer=clock)
    await cache.get_or_load(cache.key("old"), lambda: _value(entry(clock.now)))
    assert len(cache) == 0
    for i in range(10):
        await cache.get_or_load(cache.key(str(i)), lambda: _value(entry(clock.now + 60)))
    assert len(cache) == 3


async def test_zero_entries_turns_the_cache_off() -> None:
    cache = TokenCache(0)
    await cache.get_or_load(cache.key("t"), lambda: _value(entry(1e12)))
    assert cache.get(cache.key("t")) is None


async def _value(value: Entry) -> Entry:
    return value


def test_keys_are_keyed_digests_not_the_token() -> None:
    a, b = TokenCache(1), TokenCache(1)
    token = "secret-token-value"
    assert a.key(token) == a.key(token)
    assert a.key(token) != b.key(token)  # a per-process key: not a plain hash
    assert token.encode() not in a.key(token) and len(a.key(token)) == 16


def test_purge_drops_one_entry_and_clear_drops_all() -> None:
    cache = TokenCache(10)
    for t in ("a", "b"):
        cache._entries[cache.key(t)] = entry(1e12)  # type: ignore[index]
    assert cache.purge(cache.key("a")) is True
    assert cache.purge(cache.key("a")) is False
    assert cache.clear() == 1


