"""Starting and stopping the real processes of the interop tests, on loopback (ports: tests/support/ports.py)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def accepts_connections(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_until(condition: Callable[[], bool], *, what: str, process: subprocess.Popen[bytes] | None = None,
               log: Path | None = None, timeout: float = 20.0) -> None:
    """Poll ``condition`` (bounded); fail with the process's log when it never holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {process.returncode}\n{tail(log)}")
        with contextlib.suppress(OSError):
            if condition():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not ready after {timeout} s\n{tail(log)}")


def tail(log: Path | None, lines: int = 40) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM this one process, then SIGKILL it if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
