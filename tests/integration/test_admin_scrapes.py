"""/metrics shares the checks' event loop, so its rendering is bounded: a flood of scrapes renders
the registry a few times a second, not once per request (sidecar/fronts/admin.py)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from sidecar.fronts import admin
from sidecar.fronts.admin import SCRAPE_BURST, Scrapes
from tests.conftest import Running


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def test_the_registry_is_rendered_at_most_at_the_scrape_rate_and_fresh_again_after() -> None:
    registry, clock = CollectorRegistry(), Clock()
    counter = Counter("events", "events", registry=registry)
    scrapes = Scrapes(registry, clock)
    for _ in range(SCRAPE_BURST):  # a scrape now and then is always fresh
        counter.inc()
        assert f"events_total {counter._value.get()}" in scrapes.body().decode()
    counter.inc()
    assert f"events_total {float(SCRAPE_BURST)}" in scrapes.body().decode()  # the flood: the last rendering
    clock.now += 1.0
    assert f"events_total {float(SCRAPE_BURST + 1)}" in scrapes.body().decode()


async def test_a_metrics_flood_renders_the_registry_a_bounded_number_of_times(
    sidecar: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered = 0
    real = admin.generate_latest

    def counting(registry: Any) -> bytes:
        nonlocal rendered
        rendered += 1
        return real(registry)

    monkeypatch.setattr(admin, "generate_latest", counting)
    for _ in range(200):
        response = await sidecar.admin.get("/metrics")
        assert response.status == 200 and "sidecar_cache_entries" in await response.text()
    assert rendered <= SCRAPE_BURST + 8  # the burst, and the rate over the flood's few seconds
