"""Ports for the servers the tests start.

A port the kernel picks with ``bind(0)`` comes from the ephemeral range, and is free only until
the caller binds it: an outgoing connection of nginx, Envoy or a client may take it meanwhile,
and the next ``bind(0)`` may return the same port again (two servers told one port). Both made
process starts flaky under load. These come from below the ephemeral range, at random, and none
is handed out twice in a run.
"""

from __future__ import annotations

import random
import socket
import threading

_FLOOR = 15000  # below: well-known services; above the range start: outgoing connections


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as found:
            return int(found.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_CEILING = _ephemeral_start()
_handed: set[int] = set()
_lock = threading.Lock()
_random = random.SystemRandom()


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int = 1) -> int:
    """The first of ``count`` consecutive ports nothing is bound to, none handed out before."""
    if _CEILING - _FLOOR < 1000:  # an unusual ephemeral range: let the kernel pick
        return _kernel_pick(count)
    with _lock:
        for _ in range(1000):
            base = _random.randrange(_FLOOR, _CEILING - count)
            ports = range(base, base + count)
            if _handed.isdisjoint(ports) and all(_bindable(port) for port in ports):
                _handed.update(ports)
                return base
    raise AssertionError("no free ports below the ephemeral range")


def free_port() -> int:
    """A port nothing is bound to, never handed out before in this run."""
    return free_ports(1)


def _kernel_pick(count: int) -> int:
    with _lock:
        while True:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                base = int(sock.getsockname()[1])
            ports = range(base, base + count)
            if _handed.isdisjoint(ports) and all(_bindable(port) for port in ports[1:]):
                _handed.update(ports)
                return base
