"""Cost of one DPoP-bound cache hit next to a certificate-bound one, in-process, without HTTP.

    taskset -c 1 .venv/bin/python bench/dpop_hit.py
    .venv/bin/python bench/dpop_hit.py --quick    # 1 round of 200 (a smoke run)

Both decisions run ``decide_now`` on a cached token exactly as the HTTP front calls it after nginx's
check subrequest (deploy/nginx/snippets/sidecar-check.conf): the certificate-bound one with an
escaped-PEM certificate header (its thumbprint memoized), the DPoP-bound one with an ES256 proof
signed before the round (a proof is single-use: each decision takes the next one). Prints the best
of the rounds for each and their difference: what a DPoP proof adds to a hit, the ES256 signature
verification (cryptography, about 47 µs here) being the floor. ``bench/run.py`` measures the same
two over HTTP with wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import sys
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import dpop
from sidecar.config import from_mapping
from sidecar.core.decision import Decider
from sidecar.core.entry import Entry
from sidecar.core.request import CheckRequest
from sidecar.core.token_info import TokenInfo
from sidecar.dev.pki import CertificateAuthority
from sidecar.support.metrics import Metrics

TOKEN_CERT = "certificate-bound-token"
TOKEN_DPOP = "dpop-bound-token"


class Verifier:
    """Answers for the two tokens: one bound to the certificate, one to the DPoP key."""

    def __init__(self, x5t: str, jkt: str) -> None:
        self._x5t, self._jkt = x5t, jkt

    async def verify(self, token: str, issuers: tuple[str, ...] = ()) -> TokenInfo:
        exp = int(time.time()) + 3600
        if token == TOKEN_CERT:
            return TokenInfo(active=True, exp=exp, sub="alice", token_type="Bearer", cnf_x5t_s256=self._x5t)
        return TokenInfo(active=True, exp=exp, sub="dave", token_type="DPoP", cnf_jkt=self._jkt)


def original(path: str = dpop.URI) -> dict[str, str]:
    return {"method": "GET", "path": path, "host": dpop.HOST, "scheme": "https"}


async def main(rounds: int, n: int) -> None:
    logging.disable(logging.CRITICAL)
    issued = CertificateAuthority().issue("alice")
    client = dpop.Client()
    config = from_mapping({"dpop": {"enabled": True, "iat_window": 3600, "replay_max_entries": 5_000_000},
                           "log": {"decisions": "off"}, "routing": {"origins": [dpop.ORIGIN]}})
    decider = Decider(config, Verifier(issued.x5t_s256, client.jkt), Metrics())
    cert = [quote(issued.cert_pem.decode(), safe="")]
    bearer, bound = [f"Bearer {TOKEN_CERT}"], [f"DPoP {TOKEN_DPOP}"]
    first = CheckRequest(bearer, cert, "127.0.0.1", **original())
    assert isinstance(await decider.decide(first), Entry), "the certificate-bound token is not allowed"
    proof = CheckRequest(bound, (), "127.0.0.1", dpop_proofs=[client.proof(TOKEN_DPOP)], **original())
    assert isinstance(await decider.decide(proof), Entry), "the DPoP-bound token is not allowed"
    best_cert = best_dpop = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(n):
            decider.decide_now(CheckRequest(bearer, cert, "127.0.0.1", **original()))
        best_cert = min(best_cert, (time.perf_counter() - started) / n)
        proofs = [[client.proof(TOKEN_DPOP)] for _ in range(n)]  # signed outside the measurement
        started = time.perf_counter()
        for one in proofs:
            answer = decider.decide_now(CheckRequest(bound, (), "127.0.0.1", dpop_proofs=one, **original()))
        best_dpop = min(best_dpop, (time.perf_counter() - started) / n)
        assert isinstance(answer, Entry), f"a DPoP-bound hit was refused: {answer}"
    print(f"certificate_bound_hit_us={best_cert * 1e6:.2f}")
    print(f"dpop_bound_hit_us={best_dpop * 1e6:.2f}")
    print(f"dpop_adds_us={(best_dpop - best_cert) * 1e6:.2f} python={platform.python_implementation()}"
          f"-{platform.python_version()} rounds={rounds}x{n}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="rounds, the best taken (7)")
    parser.add_argument("--decisions", type=int, default=5000, help="decisions of each kind per round (5000)")
    parser.add_argument("--quick", action="store_true", help="1 round of 200")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.decisions = 1, 200
    asyncio.run(main(args.rounds, args.decisions))


if __name__ == "__main__":
    cli()
