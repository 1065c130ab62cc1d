"""A bounded run of the soak logic (bench/soak.py): 20,000 decisions with every fault cycled.

The full soak (a million decisions) is a script, not a test; this proves in CI that its driver,
its fault cycle and its oracle work, and that the oracle does catch a wrong allow.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SOAK_PATH = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


def _soak_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_soak", SOAK_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_soak"] = module
    spec.loader.exec_module(module)
    return module


async def test_twenty_thousand_decisions_under_cycling_idp_faults_allow_nothing_wrong() -> None:
    soak = _soak_module()
    tally = await soak.soak(20_000, seed=7, http_every=50, fault_period=0.03, quiet=True)
    assert tally.decisions == 20_000 and tally.http == 400
    assert tally.wrong_allows == 0, tally.wrong
    assert tally.errors == 0, {k: v for k, v in tally.outcomes.items() if "internal" in k or "exception" in k}
    kinds = {key.split(":")[0] for key in tally.outcomes}
    assert kinds == set(soak.KINDS)
    assert tally.outcomes["valid:allow"] > 0  # the mix really allows what it should
    assert sum(n for k, n in tally.outcomes.items() if k.endswith(":idp_unavailable")) > 0  # faults were hit
    line = soak.summary(tally, 1.0)
    assert line.startswith("wrong_allows=0 decisions=20000 errors=0 ") and "rss_start=" in line and "rss_end=" in line


async def test_the_soak_oracle_counts_wrong_allows_when_binding_is_switched_off() -> None:
    soak = _soak_module()
    tally = await soak.soak(3_000, seed=3, http_every=1000, fault_period=10.0, quiet=True, binding="off")
    assert tally.wrong_allows > 0 and tally.outcomes["wrong_cert:allow"] > 0
