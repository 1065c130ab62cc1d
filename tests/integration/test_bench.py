"""The bench command works end to end (a smoke run at a tiny scale; it asserts no timing)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_bench_quick_run_prints_every_scenario_and_ends_with_the_ratio() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--tokens", "20", "--miss-tokens", "1500",
         "--memory-tokens", "2000"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for section in ("cache hit, escaped PEM", "cache hit, XFCC", "cache hit, escaped PEM, log.decisions",
                    "cache hit, escaped PEM, client_cert.ca_file",
                    "p99 at half of the maximum rate", "cache miss",
                    "burst: 200 concurrent", "nginx auth_request", "cache hit, DPoP-bound",
                    "memory: RSS per cached token", "server.workers scaling",
                    "per-route policies: cache hit, one policy vs. 20 rules",
                    "the peer: Apache + mod_auth_openidc vs nginx + sidecar", "the peer: a new token"):
        assert f"== {section}" in out, out
    assert "NON-2XX" not in out, out  # every measured answer was an allow
    assert "burst: 200 concurrent requests for one new token\n  IdP calls 1;" in out  # single-flight
    found = re.search(r"IdP introspection calls (\d+) for \d+ requests.*?during the run (\d+)", out)
    assert found is not None, out
    calls, handshakes = found.groups()
    assert int(handshakes) <= 32 < int(calls)  # keep-alive: at most one handshake per pooled connection
    assert re.search(r"allowed under p19 \(the last rule\): [1-9]", out), out  # the 20th rule chose the policy
    # the peer ran for real: both authorizing fronts and both controls answered 200 under ab
    for front in ("Apache + mod_auth_openidc", "Apache alone (no auth)", "nginx + sidecar (deploy/nginx as shipped)",
                  "nginx alone (no auth)"):
        assert re.search(rf"^  {re.escape(front)} +\d+ req/s ", out, re.MULTILINE), out
    assert "req/s nginx + sidecar / Apache + mod_auth_openidc: " in out
    assert "CPU authorization adds per request: sidecar " in out
    assert "== targets (ratios within this run)\n  nginx + sidecar / Apache + mod_auth_openidc req/s" in out
    assert out.rstrip().splitlines()[-1].startswith("ratio (b)/(a) cache hit, escaped PEM: ")


def test_the_flood_bench_quick_run_prints_the_legitimate_success_rate_with_the_breaker_closed() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "flood.py"), "--quick"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    line = result.stdout.strip().splitlines()[-1]
    found = re.match(r"flood: admission=on legit_ok=(\d+)/(\d+) \(\d+%\) idp_calls_per_s=\d+ breaker=(\w+) "
                     r"attacker_requests=(\d+) attacker_429=(\d+)", line)
    assert found is not None, line
    _ok, total, breaker, requests, limited = found.groups()
    assert int(total) == 10 and breaker == "closed"  # per-token refusals never open the breaker
    assert int(limited) > int(requests) // 2  # most of the flood is refused at once, not sent to the IdP
