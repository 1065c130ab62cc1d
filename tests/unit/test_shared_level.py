"""The core's interface to a second cache level (sidecar/core/ports.py), without Redis: asked on
a miss only, its expiry caps the entry's life, its digest key keys the cache, failures deny."""

from __future__ import annotations

import time

from sidecar import config as config_module
from sidecar.core.decision import Decider
from sidecar.core.entry import Entry
from sidecar.core.outcome import Deny, Miss
from sidecar.core.ports import Verify
from sidecar.core.token_info import TokenInfo
from sidecar.support.metrics import Metrics
from tests.unit.test_hot_path import X5T, Reader, Verifier, req


class Shared:
    digest_key = b"k" * 32

    def __init__(self, until: float = float("inf"), fail: bool = False) -> None:
        self.until, self.fail, self.loads = until, fail, 0

    async def load(self, key: bytes, token: str, verify: Verify) -> tuple[TokenInfo, float]:
        self.loads += 1
        if self.fail:
            raise RuntimeError("a bug in the shared level")
        return await verify(), self.until


def decider(shared: Shared) -> tuple[Decider, Verifier]:
    verifier = Verifier()
    d = Decider(config_module.from_mapping({}), verifier, Metrics(), shared=shared)
    d.presented._header = Reader()  # type: ignore[assignment]  # the header value is the thumbprint
    return d, verifier


async def test_the_shared_level_is_asked_on_a_miss_and_never_on_a_hit() -> None:
    shared = Shared()
    d, verifier = decider(shared)
    request = req(["Bearer tok"], X5T)
    assert isinstance(await d.decide(request), Entry)
    for _ in range(5):
        assert isinstance(d.decide_now(request), Entry)
    assert shared.loads == 1 and verifier.calls == 1


async def test_the_shared_expiry_caps_the_entrys_life_in_memory() -> None:
    d, _ = decider(Shared(until=time.time() + 0.05))
    entry = await d.decide(req(["Bearer tok"], X5T))
    assert isinstance(entry, Entry)
    assert entry.expires - time.monotonic() <= 0.06
    time.sleep(0.06)
    assert isinstance(d.decide_now(req(["Bearer tok"], X5T)), Miss)


async def test_replicas_with_one_digest_key_name_a_token_alike() -> None:
    one, _ = decider(Shared())
    two, _ = decider(Shared())
    assert one.cache.key("tok") == two.cache.key("tok")
    assert Decider(config_module.from_mapping({}), Verifier(), Metrics()).cache.key("tok") != one.cache.key("tok")


async def test_a_failing_shared_level_denies_and_never_allows() -> None:
    d, _ = decider(Shared(fail=True))
    answer = await d.decide(req(["Bearer tok"], X5T))
    assert isinstance(answer, Deny) and answer.denial.reason == "internal_error" and answer.denial.status == 503
