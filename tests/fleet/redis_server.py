"""Debian's real ``redis-server`` on loopback for the fleet tests (and bench/fleet.py): one server,
or a three-node cluster; each can be killed, restarted on its port, or paused (SIGSTOP)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_port

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(100):
        port = random.randrange(20000, 40000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise AssertionError("no free pair of ports for a cluster node")


# A cache, not a database: nothing on disk; DEBUG SLEEP lets the tests slow it.
DATA = ("--save", "", "--appendonly", "no", "--enable-debug-command", "local")


@dataclass
class RedisServer:
    directory: Path
    port: int = 0
    extra: tuple[str, ...] = DATA
    tls: bool = False  # the port speaks TLS only (extra carries the tls-* files)
    config: Path | None = None  # a config file first (a Sentinel needs one it can rewrite)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.port = self.port or free_port()
        port_args = ("--port", "0", "--tls-port", str(self.port)) if self.tls else ("--port", str(self.port))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [REDIS_SERVER, *([str(self.config)] if self.config else []), *port_args, "--bind", "127.0.0.1",
             "--daemonize", "no", "--dir", str(self.directory), *self.extra],
            stdout=(self.directory / "redis.log").open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.directory / "redis.log").read_text()[-2000:]
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.02)
        raise AssertionError("redis-server did not listen within 10 s")

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
        return subprocess.run([REDIS_CLI, "-p", str(self.port), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()


def start_cluster(directory: Path, nodes: int = 3) -> list[RedisServer]:
    """``nodes`` masters on loopback, every slot covered, ready for commands."""
    cluster = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000")
    servers = [RedisServer(directory / f"node{i}", port=free_cluster_port(), extra=(*DATA, *cluster)).start()
               for i in range(nodes)]
    try:
        subprocess.run([REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{s.port}" for s in servers),
                        "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, timeout=30, check=True)
        deadline = time.monotonic() + 20
        while "cluster_state:ok" not in servers[0].cli("cluster", "info"):
            assert time.monotonic() < deadline, "the cluster did not become ok within 20 s"
            time.sleep(0.1)
        for server in servers[1:]:
            while "cluster_state:ok" not in server.cli("cluster", "info"):
                assert time.monotonic() < deadline, "the cluster did not become ok within 20 s"
                time.sleep(0.1)
    except BaseException:
        for server in servers:
            server.kill()
        raise
    return servers
