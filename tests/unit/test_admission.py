"""Fair admission of cache misses to the IdP (issue 11, items 3 and 10)."""

from __future__ import annotations

import pytest

from sidecar.config import AdmissionConfig
from sidecar.core.admission import Admission, source_of
from sidecar.core.errors import RateLimited


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def admission(clock: Clock, **config: float) -> Admission:
    return Admission(AdmissionConfig(**config), max_concurrent=10, timer=clock)  # type: ignore[arg-type]


def test_a_source_gets_its_burst_then_its_rate_and_others_are_unaffected() -> None:
    clock = Clock()
    gate = admission(clock, miss_rate=2.0, miss_burst=3, max_share=1.0)
    for _ in range(3):
        gate.enter("198.51.100.1")
        gate.leave("198.51.100.1")
    with pytest.raises(RateLimited) as refused:
        gate.enter("198.51.100.1")
    assert refused.value.status == 429 and refused.value.reason == "rate_limited" and refused.value.retry_after >= 1
    gate.enter("198.51.100.2")  # another client keeps its own budget
    clock.now += 0.5  # one more call earned at 2/s
    gate.enter("198.51.100.1")


def test_a_source_holds_at_most_its_share_of_the_idp_slots() -> None:
    gate = admission(Clock(), miss_rate=0, max_share=0.3)  # 3 of 10 slots
    for _ in range(3):
        gate.enter("198.51.100.1")
    with pytest.raises(RateLimited) as refused:
        gate.enter("198.51.100.1")
    assert "max_share" in refused.value.detail
    gate.enter("198.51.100.2")
    gate.leave("198.51.100.1")
    gate.enter("198.51.100.1")


def test_a_check_without_a_vouched_for_source_is_not_limited() -> None:
    gate = admission(Clock(), miss_rate=1.0, miss_burst=1, max_share=0.1)
    for _ in range(50):
        gate.enter(None)


def test_the_source_is_the_last_hop_and_only_from_a_trusted_peer() -> None:
    assert source_of("203.0.113.9, 198.51.100.7", trusted=True) == "198.51.100.7"
    assert source_of("203.0.113.9", trusted=False) is None
    assert source_of(None, trusted=True) is None
    assert source_of(" , ", trusted=True) is None
    assert len(source_of("x" * 500, trusted=True) or "") == 64
