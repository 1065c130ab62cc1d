"""The sidecar as a real process (``python -m sidecar``), the way the container runs it."""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class Process:
    popen: subprocess.Popen[str]
    check_url: str
    admin_url: str
    log_lines: list[dict[str, Any]] = field(default_factory=list)

    def logs(self) -> list[dict[str, Any]]:
        """The JSON log lines on stderr (read once the process has exited)."""
        assert self.popen.stderr is not None
        for line in self.popen.stderr.read().splitlines():
            try:
                self.log_lines.append(json.loads(line))
            except ValueError:
                self.log_lines.append({"msg": line})
        return self.log_lines


@asynccontextmanager
async def running_sidecar(env: dict[str, str], *args: str, nofile: int | None = None) -> AsyncIterator[Process]:
    """Start ``sidecar`` with ``env`` and wait (bounded) until /readyz says 200; kill it at the end.

    ``nofile``: the process's file-descriptor limit, soft and hard (as a container runtime sets it).
    """

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    popen = subprocess.Popen([sys.executable, "-m", "sidecar", *args], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, preexec_fn=limit)
    process = Process(popen, f"http://127.0.0.1:{env['SIDECAR_SERVER__PORT']}/check",
                      f"http://127.0.0.1:{env['SIDECAR_SERVER__ADMIN_PORT']}")
    try:
        async with aiohttp.ClientSession() as client:
            for _ in range(300):  # up to 30 s for the interpreter to start and discovery to finish
                assert popen.poll() is None, process.logs()
                try:
                    async with client.get(f"{process.admin_url}/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the sidecar did not become ready")
        yield process
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait(timeout=10)
