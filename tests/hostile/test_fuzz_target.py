"""The atheris fuzz target runs in CI for a bounded time, seeded by the committed corpus.

New inputs go to a temporary directory (the committed seeds are only read), crash artifacts to
another; any crash, timeout or out-of-memory fails the test with libFuzzer's report.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "fuzz" / "fuzz_parsers.py"
CORPUS = ROOT / "fuzz" / "corpus"
SECONDS = 30
MAX_RUNS = 100_000


def test_the_corpus_covers_every_parser_and_holds_no_private_key() -> None:
    seeds = [p for p in CORPUS.rglob("*") if p.is_file()]
    first_bytes = {p.read_bytes()[:1] for p in seeds}
    assert {b"a", b"u", b"e", b"l", b"p", b"d", b"t", b"r", b"x", b"h", b"j", b"k", b"v"} <= first_bytes
    assert not [p for p in seeds if b"PRIVATE KEY" in p.read_bytes()]


def test_the_fuzz_target_runs_the_seed_corpus_and_then_fuzzes_without_a_crash(tmp_path: Path) -> None:
    new, artifacts = tmp_path / "new", tmp_path / "artifacts"
    new.mkdir()
    artifacts.mkdir()
    command = [sys.executable, str(TARGET), str(new), str(CORPUS), f"-max_total_time={SECONDS}",
               f"-runs={MAX_RUNS}", "-max_len=8192", "-timeout=10", "-rss_limit_mb=2048",
               f"-artifact_prefix={artifacts}/", "-print_final_stats=1"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=SECONDS + 90)
    report = result.stderr[-6000:]
    assert result.returncode == 0, report
    assert list(artifacts.iterdir()) == [], report
    seeds = sum(1 for p in CORPUS.rglob("*") if p.is_file())
    assert f"{seeds} files found in {CORPUS}" in result.stderr
    executed = int(re.search(r"stat::number_of_executed_units:\s+(\d+)", result.stderr).group(1))  # type: ignore[union-attr]
    coverage = re.findall(r"cov: (\d+)", result.stderr)
    assert executed > seeds and coverage
    print(f"fuzz: execs={executed} cov={coverage[-1]} new_units={len(list(new.iterdir()))} crashes=0")
