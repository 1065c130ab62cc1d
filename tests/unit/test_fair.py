"""The fair semaphore (sidecar/support/fair.py): freed slots go to the waiting owners in turn."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

from sidecar.support.fair import OWNER, FairSlots


async def take(slots: FairSlots, owner: Hashable, order: list[Hashable]) -> None:
    OWNER.set(owner)  # each task runs in a copy of the context
    await slots.acquire()
    order.append(owner)


async def test_a_freed_slot_goes_to_the_next_owner_in_turn_not_to_the_longest_waiter() -> None:
    slots = FairSlots(1)
    await slots.acquire()  # held
    order: list[Hashable] = []
    tasks = [asyncio.create_task(take(slots, "flooder", order)) for _ in range(20)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(take(slots, "neighbour", order)))  # arrives last
    await asyncio.sleep(0)
    for _ in range(3):
        slots.release()
        await asyncio.sleep(0)
    assert order == ["flooder", "neighbour", "flooder"]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_cancelled_waiter_leaves_its_queue_and_its_slot_goes_on() -> None:
    slots = FairSlots(1)
    await slots.acquire()
    order: list[Hashable] = []
    gone = asyncio.create_task(take(slots, "gone", order))
    stays = asyncio.create_task(take(slots, "stays", order))
    await asyncio.sleep(0)
    gone.cancel()
    slots.release()  # the cancelled waiter is skipped, not handed the slot
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert order == ["stays"] and gone.cancelled()
    slots.release()
    await slots.acquire()  # the slot came back: nobody holds it
    await stays


async def test_free_slots_are_taken_at_once_up_to_the_capacity() -> None:
    slots = FairSlots(2)
    await slots.acquire()
    await slots.acquire()
    waiter = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    assert not waiter.done()
    slots.release()
    await waiter
