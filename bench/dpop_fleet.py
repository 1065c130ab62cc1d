"""What the fleet-wide DPoP replay check costs: one decision per fresh proof on a cached
DPoP-bound token, in process, with the replica's own replay store only and then with the fleet's
Redis store as well (a real ``redis-server`` on loopback, redis-py asyncio, one request at a time).

    .venv/bin/python bench/dpop_fleet.py [--requests N] [--rounds R]

Prints µs per decision for each, and the difference: the latency of the ``SET NX PX`` round trip
a DPoP request in a fleet awaits before its allow (docs/dpop.md).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import dpop
from bench.run import free_port
from sidecar import config as config_module
from sidecar.core.decision import Decider
from sidecar.core.entry import Entry
from sidecar.core.outcome import Pending
from sidecar.core.request import CheckRequest
from sidecar.core.token_info import TokenInfo, token_info_from_claims
from sidecar.dev.redis import RedisServer
from sidecar.fleet.replay import RedisReplayStore
from sidecar.fleet.store import Fleet
from sidecar.support.metrics import Metrics


class BoundVerifier:
    """Every token is active and bound to one DPoP key (the IdP is not what is measured)."""

    def __init__(self, jkt: str) -> None:
        self.jkt = jkt

    async def verify(self, token: str, issuers: tuple[str, ...] = ()) -> TokenInfo:
        return token_info_from_claims({"active": True, "client_id": "app", "scope": "read", "exp": 4_000_000_000,
                                       "token_type": "DPoP", "cnf": {"jkt": self.jkt}})


def request(proof: str) -> CheckRequest:
    return CheckRequest(["DPoP tok"], [], "127.0.0.1", method="GET", path=dpop.URI, host=dpop.HOST, scheme="https",
                        dpop_proofs=[proof])


async def per_decision(directory: Path, server: RedisServer | None, requests: int) -> float:
    raw: dict[str, Any] = {"dpop": {"enabled": True}}
    if server is not None:
        for name in ("secret", "seal"):
            (directory / name).write_text(secrets.token_urlsafe(32))
        raw["fleet"] = {"enabled": True, "url": server.url, "secret_file": str(directory / "secret"),
                        "seal_key_file": str(directory / "seal")}
    config = config_module.from_mapping(raw, {})
    key, metrics = dpop.Client(), Metrics()
    fleet = Fleet(config, metrics) if server is not None else None
    decider = Decider(config, BoundVerifier(key.jkt), metrics, shared=fleet,
                      shared_replay=RedisReplayStore(fleet) if fleet is not None else None)
    proofs = [key.proof("tok") for _ in range(requests + 1)]  # signed outside the timing
    try:
        assert isinstance(await decider.decide(request(proofs[0])), Entry)  # the token is cached now
        started = time.perf_counter()
        for proof in proofs[1:]:
            checked = request(proof)
            decision = decider.decide_now(checked)
            if isinstance(decision, Pending):
                decision = await decider.decide(checked, decision)
            assert isinstance(decision, Entry)
        return (time.perf_counter() - started) / requests * 1e6
    finally:
        if fleet is not None:
            await fleet.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-dpop-fleet-") as name:
        directory = Path(name)
        server = RedisServer(directory / "redis", free_port()).start()
        try:
            local, fleet = [], []
            for _ in range(args.rounds):
                local.append(await per_decision(directory, None, args.requests))
                fleet.append(await per_decision(directory, server, args.requests))
        finally:
            server.kill()
    low, high = statistics.median(local), statistics.median(fleet)
    print(f"DPoP hit, the replica's own replay store: {low:.1f} µs/decision (rounds: "
          f"{', '.join(f'{v:.1f}' for v in local)})")
    print(f"DPoP hit, and the fleet's Redis store:    {high:.1f} µs/decision (rounds: "
          f"{', '.join(f'{v:.1f}' for v in fleet)})")
    print(f"the fleet-wide replay check adds {high - low:.1f} µs per DPoP request")


if __name__ == "__main__":
    asyncio.run(main())
