"""The README's run command: with no IdP configured it runs the demo and shows allow and deny."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_run_command_starts_the_demo_showing_an_allow_and_a_deny_then_stops_on_sigterm() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.update(SIDECAR_SERVER__PORT=str(free_port()), SIDECAR_SERVER__ADMIN_PORT=str(free_port()),
               SIDECAR_DEMO_IDP_PORT=str(free_port()), SIDECAR_SERVER__SHUTDOWN_GRACE="1")
    process = subprocess.Popen([str(ROOT / "run.sh")], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and not any("Ctrl-C" in line for line in lines):
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
        output = "".join(lines)
        assert "ALLOW 200  alice's token with alice's certificate" in output, output
        assert "DENY 401  alice's token with bob's certificate" in output
        assert 'error="invalid_token"' in output
        curl = [line.split("try: ", 1)[1].split() for line in lines if "try: curl" in line]
        header_file = Path(curl[0][3].lstrip("@"))
        token = header_file.read_text().split("Bearer ", 1)[1].split()[0]
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert token not in stderr  # the decision log names tokens by hash only
    assert '"reason":"cnf_mismatch"' in stderr
