"""How long a proxy's decision cache may keep an allow: the per-token bound the cache sets at fill
(:func:`sidecar.core.cache.edge_second`) and the per-request value the edge sends
(:class:`sidecar.fronts.answer.EdgeTtl`), on fake clocks."""

from __future__ import annotations

from sidecar.config import CacheConfig, from_mapping
from sidecar.core.cache import Entry, TokenCache, edge_second
from sidecar.core.errors import IdpUnavailable
from sidecar.core.policies import Policies
from sidecar.core.token_info import INACTIVE, TokenInfo
from sidecar.fronts.answer import NEVER, EdgeTtl

BOUND = TokenInfo(active=True, cnf_x5t_s256="x" * 43)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def entry(info: TokenInfo, edge: int = 0) -> Entry:
    return Entry(info, None, None, None, "abcdefabcdef", edge=edge)  # type: ignore[arg-type]  # no headers needed


async def fill(cache: TokenCache, token: str, value: Entry) -> bytes:
    async def load() -> Entry:
        return value

    key = cache.key(token)
    await cache.get_or_load(key, load)
    return key


def test_an_allow_may_be_kept_until_the_second_before_its_deadline() -> None:
    assert edge_second(BOUND, 1010.0) == 1009  # nginx keeps an entry until its second is over
    assert edge_second(BOUND, 1010.99) == 1009


def test_an_inactive_or_dpop_bound_token_is_never_kept() -> None:
    assert edge_second(INACTIVE, 2000.0) == 0
    assert edge_second(TokenInfo(active=True, cnf_jkt="k" * 43), 2000.0) == 0


async def test_the_fill_bounds_the_edge_by_max_ttl_and_exp() -> None:
    timer, wall = Clock(50.0), Clock(1000.5)
    cache = TokenCache(CacheConfig(max_entries=10, max_ttl=30), timer=timer, clock=wall)
    long_lived = entry(TokenInfo(active=True, exp=5000))
    short_lived = entry(TokenInfo(active=True, exp=1004))
    await fill(cache, "long", long_lived)
    await fill(cache, "short", short_lived)
    assert long_lived.edge == 1029  # max_ttl: the entry's own deadline is 1030.5
    assert short_lived.edge == 1003  # exp 1004: over before exp begins


async def test_a_stale_answer_is_never_kept_whatever_the_clocks_say() -> None:
    timer, wall = Clock(50.0), Clock(1000.0)
    cache = TokenCache(CacheConfig(max_entries=10, max_ttl=10, stale_if_error=60), timer=timer, clock=wall)
    kept = entry(BOUND)
    key = await fill(cache, "t", kept)
    assert kept.edge == 1009
    timer.now += 11  # past the entry's deadline...
    wall.now = 990.0  # ... while the wall clock was set back: the entry's own bound is ahead again
    stale = cache.stale(key, IdpUnavailable("refused", allows_stale=True))
    assert stale is not None and stale.edge == 0 and stale.info is kept.info
    assert kept.edge == 1009  # the copy kept for stale answers is unchanged


def test_a_named_policy_sees_the_same_bound_as_the_token() -> None:
    config = from_mapping({"policies": {"admin": {"required_scopes": []}}})
    policies = Policies(config)
    token = Entry(BOUND, policies.headers.build(BOUND), None, None, "abcdefabcdef", edge=1234)
    assert policies.view(token, policies.named["admin"]).edge == 1234


def test_without_an_edge_ttl_nothing_is_kept() -> None:
    assert EdgeTtl(0, Clock(1000.2)).of(entry(BOUND, edge=5000)) == NEVER


def test_an_allow_is_kept_at_most_the_edge_ttl_from_now() -> None:
    clock = Clock(1000.7)
    one, five = EdgeTtl(1, clock), EdgeTtl(5, clock)
    far = entry(BOUND, edge=5000)
    assert one.of(far) == "@1000"  # to the end of this second: less than 1 s
    assert five.of(far) == "@1004"
    clock.now = 1001.1  # the shared value moves with the second
    assert one.of(far) == "@1001" and five.of(far) == "@1005"


def test_an_allow_near_its_own_bound_is_kept_only_until_that_bound() -> None:
    ttl = EdgeTtl(5, Clock(1000.3))
    assert ttl.of(entry(BOUND, edge=1002)) == "@1002"
    assert ttl.of(entry(BOUND, edge=1000)) == "@1000"  # this second still
    assert ttl.of(entry(BOUND, edge=999)) == NEVER
    assert ttl.of(entry(BOUND, edge=0)) == NEVER  # an answer no proxy may keep
