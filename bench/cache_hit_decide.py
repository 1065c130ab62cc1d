"""Cost of one cache-hit decision (the hot path: ``decide_now``, no coroutine), in-process, without HTTP.

    taskset -c 1 .venv/bin/python bench/cache_hit_decide.py
    .venv/bin/python bench/cache_hit_decide.py --quick    # 1 round of 2,000 (a smoke run)

Prints the best of 7 rounds of 100k decisions with the decision log off and tracing off (the first
line: compare two trees by running it with ``PYTHONPATH`` pointing at each; ratios within one run,
absolute figures drift), then the same with the decision log on (``log.decisions = "all"``, the
default: lines batched to /dev/null), and with tracing on for checks whose caller does not sample
them and for checks it does (one span each, given to the SDK's batch processor; the exporter
discards them, so the OTLP encoding, done on the SDK's thread, is not in this figure: bench/run.py
has the whole cost).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import time
from collections.abc import Sequence
from typing import Any

from sidecar.config import from_mapping
from sidecar.core.decision import Decider
from sidecar.core.entry import Entry
from sidecar.core.request import CheckRequest
from sidecar.core.token_info import TokenInfo
from sidecar.support import logs
from sidecar.support.metrics import Metrics

TRACEPARENT = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-{flags}"


class Verifier:
    async def verify(self, token: str, issuers: tuple[str, ...] = ()) -> TokenInfo:
        return TokenInfo(active=True, exp=int(time.time()) + 3600, sub="alice")


def discarding_tracer() -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from sidecar.support.tracing import Tracing

    class Discard(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    return Tracing("http://127.0.0.1:9", exporter=Discard())


async def best(decisions: str, tracing: Any, headers: dict[str, str] | None, rounds: int, n: int) -> float:
    config = from_mapping({"policy": {"binding": "off"}, "log": {"decisions": decisions}})
    decider = Decider(config, Verifier(), Metrics(), tracing=tracing)
    authorization = ["Bearer abcdefghijklmnop"]
    assert isinstance(await decider.decide(CheckRequest(authorization)), Entry)
    fastest = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(n):  # as the HTTP front does: one request value, one synchronous decision
            decider.decide_now(CheckRequest(authorization, (), "127.0.0.1", headers=headers))
        fastest = min(fastest, (time.perf_counter() - started) / n)
        decider.outcomes.decision_log.flush()
    if tracing is not None:
        await tracing.aclose()
    return fastest * 1e6


async def main(rounds: int = 7, n: int = 100_000) -> None:
    logging.disable(logging.CRITICAL)
    off = await best("off", None, None, rounds, n)
    print(f"cache_hit_decide_us={off:.2f} python={platform.python_implementation()}"
          f"-{platform.python_version()} rounds={rounds}x{n}")
    logging.disable(logging.NOTSET)
    logs.setup("info", stream=open(os.devnull, "w"))  # noqa: SIM115 - the process's log stream
    cases = (
        ('log.decisions = "all" (batched)', "all", None, None),
        ("tracing on, caller not sampled", "off", "00", discarding_tracer),
        ("tracing on, caller sampled", "off", "01", discarding_tracer),
    )
    for name, decisions, flags, tracer in cases:
        headers = None if flags is None else {"traceparent": TRACEPARENT.format(flags=flags)}
        us = await best(decisions, tracer() if tracer else None, headers, rounds, n)
        print(f"  {name:<34} {us:6.2f} µs  ({us - off:+.2f} µs)")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="rounds, the best taken (7)")
    parser.add_argument("--decisions", type=int, default=100_000, help="decisions per round (100000)")
    parser.add_argument("--quick", action="store_true", help="1 round of 2000")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.decisions = 1, 2000
    asyncio.run(main(args.rounds, args.decisions))


if __name__ == "__main__":
    cli()
