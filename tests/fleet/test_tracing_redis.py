"""A traced check on a replica: its decision span has the Redis commands of the fleet's second
cache level and the introspection as children, exported over OTLP/gRPC (the SDK's exporter) to a
receiver (sidecar/dev/otlp.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from sidecar.dev.fakeidp import FakeIdp
from sidecar.dev.otlp import OtlpReceiver
from sidecar.dev.redis import RedisServer
from tests.conftest import MakeSidecar
from tests.fleet.conftest import FleetFiles, wait_subscribed
from tests.support.pki_fixtures import TestPki

pytestmark = [pytest.mark.fleet, pytest.mark.ops]
TRACEPARENT = f"00-{'ab' * 16}-{'cd' * 8}-01"


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # the SDK's batch delay, in ms
    started = OtlpReceiver().start()
    yield started
    started.stop()


async def test_a_traced_miss_has_its_redis_commands_and_its_introspection_as_children(
        make_sidecar: MakeSidecar, redis_server: RedisServer, fleet_files: FleetFiles, receiver: OtlpReceiver,
        idp: FakeIdp, pki: TestPki) -> None:
    replica = await make_sidecar(
        fleet={"enabled": True, "url": redis_server.url, "secret_file": str(fleet_files.secret),
               "seal_key_file": str(fleet_files.key), "timeout": 0.2},
        tracing={"enabled": True, "endpoint": receiver.endpoint})
    await wait_subscribed(replica)
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    assert (await replica.check(token, pki.alice, traceparent=TRACEPARENT)).status == 200
    decisions = []
    for _ in range(100):
        decisions = [s for s in receiver.of("sidecar") if s.name == "sidecar check"]
        if decisions:
            break
        await asyncio.sleep(0.05)
    (decision,) = decisions
    assert decision.trace_id == "ab" * 16 and decision.parent_span_id == "cd" * 8
    await asyncio.sleep(0.2)  # the children ended first; they may come in another batch
    children = [s for s in receiver.of("sidecar") if s.parent_span_id == decision.span_id]
    assert {s.name for s in children} == {"redis", "idp introspection"}, children
    redis = [s for s in children if s.name == "redis"]
    assert len(redis) >= 2 and all(s.attributes == {"db.system": "redis", "sidecar.result": "ok"} for s in redis)
    assert all(s.trace_id == decision.trace_id for s in children)
