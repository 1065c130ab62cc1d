"""Background tasks end with their owner, and a task that ignores its cancellation cannot hold a
shutdown (or the retirement of a reload's replaced parts) forever."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sidecar.support.background import Background


async def test_cancel_ends_every_task() -> None:
    background = Background()
    ended: list[str] = []

    async def poll(name: str) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            ended.append(name)

    background.spawn(poll("a"))
    background.spawn(poll("b"))
    await asyncio.sleep(0)
    await background.cancel()
    assert sorted(ended) == ["a", "b"]


async def test_a_task_that_ignores_its_cancellation_is_left_behind_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    background = Background()
    release = asyncio.Event()

    async def stuck_teardown() -> None:  # as a shielded library teardown on a dead connection
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    background.spawn(stuck_teardown())
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="sidecar.support.background"):
        async with asyncio.timeout(30):  # a guard against the hang this test is about, not a speed check
            await background.cancel(wait=0.05)
    (line,) = [r for r in caplog.records if "did not end" in r.getMessage()]
    assert line.__dict__["task"].endswith("stuck_teardown")
    release.set()
    await asyncio.sleep(0)


async def test_a_task_that_had_failed_is_named_and_does_not_stop_the_others_from_ending(
        caplog: pytest.LogCaptureFixture) -> None:
    background = Background()
    ended: list[str] = []

    async def fails() -> None:
        raise RuntimeError("boom")

    async def polls() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            ended.append("polls")

    background.spawn(fails())
    background.spawn(polls())
    await asyncio.sleep(0.01)
    with caplog.at_level(logging.WARNING, logger="sidecar.support.background"):
        await background.cancel()
    assert ended == ["polls"]
    assert [r.__dict__["error_type"] for r in caplog.records if "had failed" in r.getMessage()] == ["RuntimeError"]
