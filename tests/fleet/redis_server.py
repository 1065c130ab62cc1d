"""A three-node Redis cluster on loopback for the fleet tests, of :class:`sidecar.dev.redis.RedisServer`
nodes (one server alone: that class, on a port of tests/support/ports.py)."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from pathlib import Path

from sidecar.dev.redis import DATA, REDIS_CLI, RedisServer


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
