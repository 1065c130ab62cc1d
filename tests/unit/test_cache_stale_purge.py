"""The cache's stale-if-error store and purges, on a fake clock."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sidecar.config import CacheConfig
from sidecar.core.cache import Entry, TokenCache
from sidecar.core.errors import InvalidToken
from sidecar.core.purges import Purge
from sidecar.core.token_info import INACTIVE, TokenInfo
from sidecar.idp.failures import IdpError, IdpFailure


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


BOUND = TokenInfo(active=True, cnf_x5t_s256="x" * 43)
DOWN = IdpError(IdpFailure.REFUSED, "connection refused")


def TokenCache_(max_entries: int, *, timer: Any = time.monotonic, stale_if_error: float = 0.0,
                max_ttl: float = 10.0) -> TokenCache:
    """Entries live max_ttl (10 s) unless exp says less; one clock for deadlines and exp."""
    clock = timer if timer is not time.monotonic else time.time
    return TokenCache(CacheConfig(max_entries=max_entries, stale_if_error=stale_if_error, max_ttl=max_ttl),
                      timer=timer, clock=clock)


def entry(info: TokenInfo, _expires: float = 0.0, token_hash: str = "abcdefabcdef") -> Entry:
    return Entry(info, None, None, None, token_hash)  # type: ignore[arg-type]  # no headers needed here


async def fill(cache: TokenCache, token: str, value: Entry) -> bytes:
    async def load() -> Entry:
        return value

    key = cache.key(token)
    await cache.get_or_load(key, load)
    return key


async def test_stale_is_off_by_default() -> None:
    clock = Clock()
    cache = TokenCache_(10, timer=clock)
    key = await fill(cache, "t", entry(BOUND, clock.now + 10))
    clock.now += 11
    assert cache.get(key) is None and cache.stale(key, DOWN) is None


async def test_an_active_bound_entry_stays_available_for_the_window_after_expiry_only() -> None:
    clock = Clock()
    cache = TokenCache_(10, timer=clock, stale_if_error=30)
    key = await fill(cache, "t", entry(BOUND, clock.now + 10))
    clock.now += 11
    assert cache.get(key) is None and cache.stale(key, DOWN) is not None
    clock.now += 30
    assert cache.stale(key, DOWN) is None


async def test_the_stale_window_ends_at_exp() -> None:
    clock = Clock()
    cache = TokenCache_(10, timer=clock, stale_if_error=3600)
    info = TokenInfo(active=True, cnf_x5t_s256="x" * 43, exp=int(clock.now) + 20)
    key = await fill(cache, "t", entry(info, clock.now + 10))
    clock.now += 11
    assert cache.stale(key, DOWN) is not None
    clock.now += 10
    assert cache.stale(key, DOWN) is None


async def test_unbound_inactive_or_statically_denied_answers_are_not_kept_stale() -> None:
    clock = Clock()
    cache = TokenCache_(10, timer=clock, stale_if_error=30)
    denied = Entry(BOUND, None, InvalidToken("issuer_not_allowed"), None, "h")  # type: ignore[arg-type]
    for n, value in enumerate((entry(TokenInfo(active=True), clock.now + 10), entry(INACTIVE, clock.now + 10),
                               denied)):
        assert cache.stale(await fill(cache, f"t{n}", value), DOWN) is None


async def test_a_fresh_inactive_answer_drops_the_stale_copy() -> None:
    clock = Clock()
    cache = TokenCache_(10, timer=clock, stale_if_error=30)
    key = await fill(cache, "t", entry(BOUND, clock.now + 10))
    clock.now += 11
    await fill(cache, "t", entry(INACTIVE, clock.now + 5))
    assert cache.stale(key, DOWN) is None


async def test_purge_by_key_drops_the_entry_and_its_stale_copy() -> None:
    cache = TokenCache_(10, stale_if_error=30)
    key = await fill(cache, "t", entry(BOUND, time.monotonic() + 10))
    assert cache.purge(key) is True
    assert cache.get(key) is None and cache.stale(key, DOWN) is None
    assert cache.purge(key) is False


async def test_purge_by_hash_drops_every_entry_with_that_hash_and_no_other() -> None:
    cache = TokenCache_(10, stale_if_error=30)
    soon = time.monotonic() + 10
    a = await fill(cache, "a", entry(BOUND, soon, "aaaaaaaaaaaa"))
    b = await fill(cache, "b", entry(BOUND, soon, "aaaaaaaaaaaa"))
    c = await fill(cache, "c", entry(BOUND, soon, "cccccccccccc"))
    assert cache.drop(Purge.hash("aaaaaaaaaaaa")) == 2
    assert cache.get(a) is None and cache.get(b) is None and cache.stale(a, DOWN) is None
    assert cache.get(c) is not None
    assert cache.drop(Purge.hash("aaaaaaaaaaaa")) == 0


async def test_a_load_in_flight_during_a_purge_does_not_fill_the_cache() -> None:
    cache = TokenCache_(10)
    release = asyncio.Event()

    async def load() -> Entry:
        await release.wait()
        return entry(BOUND, time.monotonic() + 10)

    key = cache.key("t")
    pending = asyncio.create_task(cache.get_or_load(key, load))
    await asyncio.sleep(0.01)
    cache.purge(key)
    release.set()
    await pending  # the waiters still get their answer
    assert cache.get(key) is None


async def test_clear_drops_everything_including_stale_copies() -> None:
    cache = TokenCache_(10, stale_if_error=30)
    key = await fill(cache, "t", entry(BOUND, time.monotonic() + 10))
    assert cache.clear() == 1
    assert cache.get(key) is None and cache.stale(key, DOWN) is None


async def test_a_stale_answer_is_never_used_when_the_sidecar_itself_refused_the_call() -> None:
    """Saturation and per-source limits happen while the IdP answers: a flood must not turn them
    into a way to be served an answer the IdP might now give differently (revoked)."""
    clock = Clock()
    cache = TokenCache_(10, timer=clock, stale_if_error=30)
    key = await fill(cache, "t", entry(BOUND))
    clock.now += 11
    assert cache.stale(key, DOWN) is not None
    assert cache.stale(key, IdpError(IdpFailure.SATURATED, "no introspection slot")) is None
    assert cache.stale(key, IdpError(IdpFailure.HTTP_4XX, "answered 400", status=400)) is None
