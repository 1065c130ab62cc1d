"""/metrics shares the checks' event loop: it is rendered a few metric families at a time (the loop
serves checks in between), by one rendering concurrent scrapes share; a scrape that follows
another is fresh (sidecar/fronts/admin.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest

from sidecar.fronts import admin
from sidecar.fronts.admin import Scrapes


def registry_of(families: int) -> tuple[CollectorRegistry, list[Counter]]:
    registry = CollectorRegistry()
    return registry, [Counter(f"events{i}", "events", ["kind"], registry=registry) for i in range(families)]


async def test_a_rendering_is_what_prometheus_client_renders_and_a_later_scrape_is_fresh() -> None:
    registry, counters = registry_of(10)
    for index, counter in enumerate(counters):
        counter.labels(f"k{index}").inc()
    scrapes = Scrapes(registry)
    assert await scrapes.body() == generate_latest(registry)
    counters[0].labels("k0").inc()
    assert 'events0_total{kind="k0"} 2.0' in (await scrapes.body()).decode()


async def test_a_rendering_lets_the_loop_serve_others_between_its_steps_and_concurrent_scrapes_share_it() -> None:
    registry, _ = registry_of(40)
    scrapes = Scrapes(registry)
    served = 0

    async def other() -> None:
        nonlocal served
        while True:
            served += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    await asyncio.sleep(0)
    calls = 0
    real = admin.generate_latest

    def counted(collector: Any) -> bytes:
        nonlocal calls
        calls += 1
        return real(collector)

    admin.generate_latest = counted  # type: ignore[assignment]
    try:
        bodies = await asyncio.gather(*(scrapes.body() for _ in range(5)))
    finally:
        admin.generate_latest = real
        task.cancel()
    assert len(set(bodies)) == 1 and calls == 40  # one rendering for the five scrapes, a family at a time
    assert served >= 40 // admin.FAMILIES_PER_STEP  # the loop ran the other task between the steps
