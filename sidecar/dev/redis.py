"""Debian's real ``redis-server`` on loopback, for development: the fleet tests, the fleet benches
(bench/fleet.py, bench/dpop_fleet.py), or a local fleet of sidecars to try.

One server per :class:`RedisServer`, on the port the caller chose; it can be killed, restarted on
its port, or paused (SIGSTOP). It keeps nothing on disk (a cache, not a database).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"

# A cache, not a database: nothing on disk; DEBUG SLEEP lets the tests slow it.
DATA = ("--save", "", "--appendonly", "no", "--enable-debug-command", "local")


@dataclass
class RedisServer:
    directory: Path
    port: int
    extra: tuple[str, ...] = DATA
    tls: bool = False  # the port speaks TLS only (extra carries the tls-* files)
    config: Path | None = None  # a config file first (a Sentinel needs one it can rewrite)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start it and wait (at most 10 s) until it listens."""
        port_args = ("--port", "0", "--tls-port", str(self.port)) if self.tls else ("--port", str(self.port))
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / "redis.log"
        self.process = subprocess.Popen(  # noqa: S603 (a fixed binary, arguments from the caller)
            [REDIS_SERVER, *([str(self.config)] if self.config else []), *port_args, "--bind", "127.0.0.1",
             "--daemonize", "no", "--dir", str(self.directory), *self.extra],
            stdout=log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {log.read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.02)
        raise RuntimeError("redis-server did not listen within 10 s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait(5)

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def cli(self, *args: str) -> str:
        """One redis-cli command (plain TCP servers only)."""
        return subprocess.run([REDIS_CLI, "-p", str(self.port), *args], capture_output=True, text=True,  # noqa: S603
                              timeout=10, check=True).stdout.strip()
