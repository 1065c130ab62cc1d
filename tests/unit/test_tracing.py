"""Tracing of decisions (sidecar/support/tracing.py) with the SDK's in-memory exporter: which checks
get a span, whose trace it joins, what it carries; and that with tracing off nothing of
OpenTelemetry is even imported."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from sidecar import config as config_module
from sidecar.core.decision import Decider
from sidecar.core.entry import Entry
from sidecar.core.errors import IdpUnavailable
from sidecar.core.outcome import Deny
from sidecar.core.request import CheckRequest
from sidecar.core.token_info import TokenInfo
from sidecar.support import tracing
from sidecar.support.metrics import Metrics
from sidecar.support.tracing import Tracing

TRACE, PARENT = "ab" * 16, "cd" * 8
SAMPLED, UNSAMPLED = f"00-{TRACE}-{PARENT}-01", f"00-{TRACE}-{PARENT}-00"


TOKEN = "s3cretTokenValue"


class Verifier:
    """An IdP call that opens its child span as the idp layer does; ``down``: the IdP fails."""

    down = False

    async def verify(self, token: str, issuers: tuple[str, ...] = ()) -> TokenInfo:
        span = tracing.child("idp introspection", **{"sidecar.idp.endpoint": "introspection"})
        await asyncio.sleep(0)
        if self.down:
            span.end("refused", error=True)
            raise IdpUnavailable("refused", "connection refused")
        span.end("active")
        return TokenInfo(active=True, exp=int(time.time()) + 3600, client_id="alice", scopes=frozenset({"read"}))


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()


def decider(exporter: InMemorySpanExporter, ratio: float = 1.0, **policy: object) -> tuple[Decider, Tracing]:
    traced = Tracing("http://127.0.0.1:9", sample_ratio=ratio, exporter=exporter)
    config = config_module.from_mapping({"policy": {"binding": "off", **policy}})
    return Decider(config, Verifier(), Metrics(), tracing=traced), traced


def check(traceparent: str | None = None, peer: str = "127.0.0.1") -> CheckRequest:
    headers = {} if traceparent is None else {"traceparent": traceparent}
    return CheckRequest([f"Bearer {TOKEN}"], (), peer, headers=headers)


async def spans(traced: Tracing, exporter: InMemorySpanExporter) -> list[object]:
    await traced.aclose()  # exports what is queued
    return list(exporter.get_finished_spans())


async def test_a_check_joins_the_trace_of_a_trusted_proxy_and_its_idp_call_is_its_child(
        exported: InMemorySpanExporter) -> None:
    d, traced = decider(exported)
    assert isinstance(await d.decide(check(SAMPLED)), Entry)
    assert isinstance(d.decide_now(check(SAMPLED)), Entry)
    introspection, miss, hit = await spans(traced, exported)
    for span in (miss, hit):
        assert span.name == "sidecar check" and format(span.context.trace_id, "032x") == TRACE  # type: ignore[attr-defined]
        assert format(span.parent.span_id, "016x") == PARENT  # type: ignore[attr-defined]
    assert miss.attributes["sidecar.cache"] == "miss" and hit.attributes["sidecar.cache"] == "hit"  # type: ignore[attr-defined]
    assert dict(hit.attributes) == {"sidecar.outcome": "allow", "sidecar.reason": "ok", "sidecar.cache": "hit",  # type: ignore[attr-defined]
                                    "sidecar.policy": "default", "http.response.status_code": 200,
                                    "sidecar.client_id": "alice"}
    assert introspection.parent.span_id == miss.context.span_id  # type: ignore[attr-defined]
    assert hit.start_time <= hit.end_time  # type: ignore[attr-defined]


async def test_a_denial_says_its_reason_and_an_idp_failure_is_an_error(exported: InMemorySpanExporter) -> None:
    d, traced = decider(exported, required_scopes=["write"])
    await d.decide(check(SAMPLED))
    assert isinstance(d.decide_now(check(SAMPLED)), Deny)
    assert isinstance(d.decide_now(CheckRequest([], (), "127.0.0.1", headers={"traceparent": SAMPLED})), Deny)
    d._verifier.down = True  # type: ignore[attr-defined]
    assert isinstance(await d.decide(CheckRequest(["Bearer other"], (), "127.0.0.1", headers={"traceparent": SAMPLED})),
                      Deny)
    every = await spans(traced, exported)
    finished = [s for s in every if s.name == "sidecar check"]  # type: ignore[attr-defined]
    reasons = [(s.attributes["sidecar.reason"], s.attributes["sidecar.cache"]) for s in finished]  # type: ignore[attr-defined]
    assert reasons == [("scope_missing", "miss"), ("scope_missing", "hit"), ("token_missing", "none"),
                       ("idp_unavailable", "miss")]
    assert [s.status.status_code for s in finished] == [StatusCode.UNSET] * 3 + [StatusCode.ERROR]  # type: ignore[attr-defined]
    assert finished[3].attributes["http.response.status_code"] == 503  # type: ignore[attr-defined]
    assert TOKEN not in repr([dict(s.attributes) for s in every])  # type: ignore[attr-defined]


async def test_a_check_the_caller_does_not_sample_gets_no_span(exported: InMemorySpanExporter) -> None:
    d, traced = decider(exported)
    await d.decide(check(UNSAMPLED))
    d.decide_now(check(UNSAMPLED))
    assert await spans(traced, exported) == []


async def test_the_trace_context_of_a_peer_that_is_no_trusted_proxy_is_ignored(exported: InMemorySpanExporter) -> None:
    d, traced = decider(exported)
    await d.decide(check(SAMPLED))
    d.decide_now(check(UNSAMPLED, peer="192.0.2.7"))  # its "not sampled" does not count either
    d.decide_now(check(SAMPLED, peer="192.0.2.7"))
    untrusted = [s for s in await spans(traced, exported) if s.name == "sidecar check"][1:]  # type: ignore[attr-defined]
    assert len(untrusted) == 2 and all(s.parent is None for s in untrusted)  # type: ignore[attr-defined]
    assert all(format(s.context.trace_id, "032x") != TRACE for s in untrusted)  # type: ignore[attr-defined]


async def test_checks_without_a_trace_start_one_by_the_sample_ratio(exported: InMemorySpanExporter) -> None:
    d, traced = decider(exported, ratio=0.0)
    await d.decide(check())
    for _ in range(50):
        d.decide_now(check())
    d.decide_now(check(SAMPLED))  # a caller's sampled trace is followed whatever the ratio
    (span,) = await spans(traced, exported)
    assert format(span.context.trace_id, "032x") == TRACE  # type: ignore[attr-defined]


async def test_a_malformed_traceparent_is_as_if_there_were_none(exported: InMemorySpanExporter) -> None:
    d, traced = decider(exported)
    await d.decide(check("00-not-a-trace-01"))
    (_, span) = await spans(traced, exported)
    assert span.parent is None  # type: ignore[attr-defined]


def test_with_tracing_off_opentelemetry_is_never_imported_and_a_child_span_is_the_no_op() -> None:
    program = """
import asyncio, sys, time
from sidecar import config
from sidecar.core.decision import Decider
from sidecar.core.request import CheckRequest
from sidecar.core.token_info import TokenInfo
from sidecar.support import tracing
from sidecar.support.metrics import Metrics

class Verifier:
    async def verify(self, token, issuers=()):
        return TokenInfo(active=True, exp=int(time.time()) + 3600)

async def main():
    d = Decider(config.from_mapping({"policy": {"binding": "off"}}), Verifier(), Metrics())
    headers = {"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"}
    await d.decide(CheckRequest(["Bearer tok"], (), "127.0.0.1", headers=headers))
    d.decide_now(CheckRequest(["Bearer tok"], (), "127.0.0.1", headers=headers))
    assert d.outcomes.tracing is None and tracing.child("idp introspection") is tracing.NO_SPAN
    print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))

asyncio.run(main())
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
