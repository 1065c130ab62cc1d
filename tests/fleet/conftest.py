"""Fixtures of the fleet tests: a real Redis per test, the fleet's secret files, and replicas
(whole sidecars, check and admin ports) sharing that Redis and the fake IdP."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sidecar.dev.redis import RedisServer
from tests.conftest import MakeSidecar, Running
from tests.support.ports import free_port

ADMIN_SECRET = "fleet-admin-secret-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_SECRET}"}


@dataclass(frozen=True)
class FleetFiles:
    secret: Path
    key: Path
    other_key: Path


@pytest.fixture
def fleet_files(tmp_path: Path) -> FleetFiles:
    files = []
    for name in ("secret", "key", "other_key"):
        path = tmp_path / f"fleet-{name}"
        path.write_text(secrets.token_urlsafe(32))
        files.append(path)
    return FleetFiles(*files)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", free_port()).start()
    yield server
    server.kill()


MakeReplica = Callable[..., Awaitable[Running]]


@pytest.fixture
def make_replica(make_sidecar: MakeSidecar, redis_server: RedisServer, fleet_files: FleetFiles) -> MakeReplica:
    """A sidecar in the fleet of ``redis_server``; keyword arguments override ``[fleet]`` keys
    (``cache``, ``dpop`` and ``events``: those sections). The replicas share one clock: ``clock_skew`` 0."""

    async def start(cache: dict[str, Any] | None = None, dpop: dict[str, Any] | None = None,
                    events: dict[str, Any] | None = None, **fleet: Any) -> Running:
        section = {"enabled": True, "url": redis_server.url, "secret_file": str(fleet_files.secret),
                   "seal_key_file": str(fleet_files.key), "timeout": 0.2, "clock_skew": 0.0, **fleet}
        running = await make_sidecar(fleet=section, server={"admin_secret": ADMIN_SECRET}, cache=cache or {},
                                     dpop=dpop or {}, events=events or {})
        await wait_subscribed(running)
        return running

    return start


def fleet_of(running: Running) -> Any:
    assert running.sidecar.fleet is not None
    return running.sidecar.fleet


async def wait_subscribed(running: Running, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        assert running.sidecar.purges is not None
        await running.sidecar.purges.subscribed.wait()


def events(running: Running, event: str) -> float:
    """The value of ``sidecar_fleet_total{event=...}`` on a replica."""
    value = running.sidecar.metrics.registry.get_sample_value("sidecar_fleet_total", {"event": event})
    return value or 0.0
