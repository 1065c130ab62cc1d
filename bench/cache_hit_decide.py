"""Cost of one cache-hit decision (the hot path: ``decide_now``, no coroutine), in-process, without HTTP.

    taskset -c 1 .venv/bin/python bench/cache_hit_decide.py

Prints the best of 7 rounds of 100k decisions. Compare two trees by running it with
``PYTHONPATH`` pointing at each (ratios within one run; absolute figures drift).
"""

from __future__ import annotations

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
    async def verify(self, token: str) -> TokenInfo:
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


if __name__ == "__main__":
    asyncio.run(main())
