"""The one bounded memo and the one single-flight every cache of the sidecar is built on."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.support.memo import Memo
from sidecar.support.singleflight import SingleFlight


def test_a_memo_bounded_by_bytes_drops_the_oldest_values_to_stay_under_the_bound() -> None:
    memo: Memo[str, int] = Memo(1000, max_bytes=10_000, size_of=lambda key, _v: len(key))
    for i in range(100):
        memo.put(f"{i:03d}" + "x" * 997, i)  # 1,000 bytes each
    assert memo.bytes <= 10_000 and len(memo) == 10
    assert memo.get("099" + "x" * 997) == 99 and memo.get("000" + "x" * 997) is None


def test_a_value_larger_than_the_whole_bound_is_returned_but_never_held() -> None:
    memo: Memo[str, str] = Memo(10, max_bytes=100, size_of=lambda key, _v: len(key))
    memo.put("small", "kept")
    assert memo.put("y" * 500, "big") == "big"
    assert memo.get("y" * 500) is None and memo.get("small") == "kept" and memo.bytes == 5


def test_a_memo_bounded_by_entries_drops_the_oldest_first_and_replacing_keeps_the_count() -> None:
    memo: Memo[int, int] = Memo(3)
    for i in range(5):
        memo.put(i, i)
    memo.put(4, 40)
    assert [memo.get(i) for i in range(5)] == [None, None, 2, 3, 40] and len(memo) == 3


def test_a_byte_bound_needs_a_size_function() -> None:
    with pytest.raises(ValueError, match="size_of"):
        Memo(10, max_bytes=100)


async def test_concurrent_calls_for_one_key_share_one_call_and_a_leaving_caller_cancels_nothing() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    calls = 0
    release = asyncio.Event()

    async def call() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return 7

    first = asyncio.create_task(flight.run("k", call))
    others = [asyncio.create_task(flight.run("k", call)) for _ in range(10)]
    await asyncio.sleep(0.01)
    assert "k" in flight
    first.cancel()
    release.set()
    results = await asyncio.gather(*others)
    assert calls == 1 and {r for r in results} == {(7, False)} and "k" not in flight
