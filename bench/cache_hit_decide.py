"""Cost of one cache-hit decision (the hot path: ``decide_now``, no coroutine), in-process, without HTTP.

    taskset -c 1 .venv/bin/python bench/cache_hit_decide.py
    .venv/bin/python bench/cache_hit_decide.py --quick    # 1 round of 2,000 (a smoke run)

Prints the best of 7 rounds of 100k decisions. Compare two trees by running it with
``PYTHONPATH`` pointing at each (ratios within one run; absolute figures drift).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import time

from sidecar.config import from_mapping
from sidecar.core.decision import Decider
from sidecar.core.entry import Entry
from sidecar.core.request import CheckRequest
from sidecar.core.token_info import TokenInfo
from sidecar.support.metrics import Metrics


class Verifier:
    async def verify(self, token: str, issuers: tuple[str, ...] = ()) -> TokenInfo:
        return TokenInfo(active=True, exp=int(time.time()) + 3600, sub="alice")


async def main(rounds: int = 7, n: int = 100_000) -> None:
    logging.disable(logging.CRITICAL)
    config = from_mapping({"policy": {"binding": "off"}, "log": {"decisions": "off"}})
    decider = Decider(config, Verifier(), Metrics())
    authorization = ["Bearer abcdefghijklmnop"]
    assert isinstance(await decider.decide(CheckRequest(authorization)), Entry)
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(n):  # as the HTTP front does: one request value, one synchronous decision
            decider.decide_now(CheckRequest(authorization, (), "127.0.0.1"))
        best = min(best, (time.perf_counter() - started) / n)
    print(f"cache_hit_decide_us={best * 1e6:.2f} python={platform.python_implementation()}"
          f"-{platform.python_version()} rounds={rounds}x{n}")


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
