"""The sidecar as a real process (``python -m sidecar``), the way the container runs it."""

from __future__ import annotations

import asyncio
import json
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


# Sets the limit, then execs the command: no preexec_fn, which makes subprocess fork() this
# multi-threaded test process (gRPC's event-engine threads, once a gRPC test ran) instead of
# vfork(); gRPC's fork handlers then ran in the child and killed it before exec now and then
# ("epoll_wait error: Bad file descriptor").
_LIMITED = ("import os, resource, sys; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2]))); "
            "os.execv(sys.argv[3], sys.argv[3:])")


def with_nofile(nofile: int, command: list[str], *, hard: int | None = None) -> list[str]:
    """``command`` run with the descriptor limit ``nofile`` (soft; hard: ``hard``, default the same)."""
    return [sys.executable, "-c", _LIMITED, str(nofile), str(nofile if hard is None else hard), *command]


@asynccontextmanager
async def running_sidecar(env: dict[str, str], *args: str, nofile: int | None = None) -> AsyncIterator[Process]:
    """Start ``sidecar`` with ``env`` and wait (bounded) until /readyz says 200; kill it at the end.

    ``nofile``: the process's file-descriptor limit, soft and hard (as a container runtime sets it).
    """

    command = [sys.executable, "-m", "sidecar", *args]
    popen = subprocess.Popen(command if nofile is None else with_nofile(nofile, command), env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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
