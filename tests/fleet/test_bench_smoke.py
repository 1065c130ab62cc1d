"""bench/fleet.py works end to end at a tiny scale (it asserts call counts, never timing)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.fleet


def test_the_fleet_bench_prints_one_idp_call_per_token_with_redis_and_one_per_replica_without() -> None:
    command = [sys.executable, str(ROOT / "bench" / "fleet.py"), "--tokens", "60", "--hits", "20", "--l2-sample", "10",
               "--concurrency", "4"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [x for x in result.stdout.splitlines() if x.startswith("fleet: ")]
    assert len(lines) == 2, result.stdout
    figures = [re.match(r"fleet: idp_calls_per_token=([\d.]+) replicas=4 hit_p50_ms=[\d.]+ l2_hit_p50_ms=", x)
               for x in lines]
    assert all(figures), lines
    with_redis, without = (float(f.group(1)) for f in figures if f)
    # The bench's target is 1.05 at full scale; a smoke run on a loaded machine may see a Redis
    # command pass fleet.timeout (printed in the events), so this bound is looser.
    assert with_redis <= 1.5 and without == 4.0, result.stdout
    assert "redis=on" in lines[0] and "redis=off" in lines[1] and "non-200: 0" in result.stdout
