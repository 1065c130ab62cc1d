"""The README's run command: with no IdP configured it runs the demo and shows allow and deny; the
story on stdout, the logs in a file, no keys left behind, a taken port named."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp: Path, **ports: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.update(SIDECAR_SERVER__PORT=str(ports.get("port", free_port())),
               SIDECAR_SERVER__ADMIN_PORT=str(ports.get("admin", free_port())),
               SIDECAR_DEMO_IDP_PORT=str(ports.get("idp", free_port())), SIDECAR_SERVER__SHUTDOWN_GRACE="1",
               TMPDIR=str(tmp))  # the demo's files and its log file go there
    return env


def test_run_command_starts_the_demo_showing_an_allow_and_a_deny_then_stops_on_sigterm(tmp_path: Path) -> None:
    process = subprocess.Popen([str(ROOT / "run.sh")], env=_env(tmp_path), stdout=subprocess.PIPE,
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
        assert header_file.parent.parent == tmp_path
    finally:
        process.send_signal(signal.SIGTERM)
        rest, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert not [line for line in lines + rest.splitlines() if line.lstrip().startswith("{")]  # no log line
    assert f"JSON logs go to {tmp_path / 'sidecar-demo.log'}" in output
    logged = (tmp_path / "sidecar-demo.log").read_text()
    assert token not in logged  # the decision log names tokens by hash only
    assert '"reason":"cnf_mismatch"' in logged
    assert not header_file.parent.exists()  # the throwaway keys and tokens are gone
    assert not list(tmp_path.glob("sidecar-demo-*"))


def test_a_taken_port_is_named_with_the_variable_that_moves_it(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        result = subprocess.run([str(ROOT / "run.sh")], env=_env(tmp_path, port=port), capture_output=True,
                                text=True, timeout=90)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"sidecar demo: cannot listen on 127.0.0.1:{port} (server.port): already in use; "
        "set SIDECAR_SERVER__PORT to another port"], result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not list(tmp_path.glob("sidecar-demo-*"))  # no keys left behind
