"""The connection gate's contracts that do not need a socket: the aiohttp internals it reads are
still there, the caps fit the descriptor limit, and the new server keys are validated."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from typing import Any

import pytest
from aiohttp import web

from sidecar.config import ConfigError, from_mapping
from sidecar.fronts.connections import Gate, GuardedHandler, PortLimits, PortMetrics
from sidecar.support.metrics import Metrics
from tests.support.sidecar_process import with_nofile


async def test_the_aiohttp_attributes_the_handler_reads_exist() -> None:
    # GuardedHandler reads _request_count, _request_in_progress and _messages: an aiohttp
    # upgrade that renames them must fail here, not silently disable the head deadline.
    async def handler(request: web.BaseRequest) -> web.Response:
        return web.Response()

    server = web.Server(handler)
    limits = PortLimits("check", 4, 1.0, 1024, 5.0)
    gate = Gate(server, limits, PortMetrics(Metrics().registry))
    protocol = gate()
    assert isinstance(protocol, GuardedHandler)
    assert protocol._request_count == 0 and protocol._request_in_progress is False
    assert len(protocol._messages) == 0


def caps_under(nofile: int, check: int, admin: int) -> list[int]:
    """fit_file_descriptors in a child process whose limit is ``nofile`` (soft and hard)."""
    code = ("import json; from sidecar.fronts.connections import fit_file_descriptors as f; "
            f"print(json.dumps(f({check}, {admin}, reserve=100)))")

    out = subprocess.run(with_nofile(nofile, [sys.executable, "-c", code]), capture_output=True, text=True,
                         timeout=30, check=True)
    caps: list[int] = json.loads(out.stdout)
    return caps


def test_the_caps_are_lowered_to_fit_the_descriptor_limit_the_admin_cap_staying_small() -> None:
    assert caps_under(1024, 1024, 16) == [908, 16]  # 1024 - 100 spare - 16 for the admin port
    assert caps_under(200, 1024, 16) == [88, 12]  # the admin port gets at most an eighth
    assert caps_under(4096, 1024, 16) == [1024, 16]


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    code = ("import resource; from sidecar.fronts.connections import fit_file_descriptors as f; "
            "f(1, 1, reserve=0); print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])")

    out = subprocess.run(with_nofile(256, [sys.executable, "-c", code], hard=hard), capture_output=True, text=True,
                         timeout=30, check=True)
    assert int(out.stdout) == (hard if hard != resource.RLIM_INFINITY else 1 << 20)


@pytest.mark.parametrize(("server", "key"), [
    ({"header_timeout": 0}, "server.header_timeout"),
    ({"header_timeout": 301}, "server.header_timeout"),
    ({"max_head_size": 1000}, "server.max_head_size"),
    ({"max_connections": 0}, "server.max_connections"),
    ({"admin_max_connections": 0}, "server.admin_max_connections"),
    ({"admin_max_connections": 5000}, "server.admin_max_connections"),
    ({"purge_peers": ["not-a-network"]}, "server.purge_peers"),
    ({"purge_rate": 0}, "server.purge_rate"),
    ({"purge_burst": 0}, "server.purge_burst"),
    ({"purge_backoff": 0}, "server.purge_backoff"),
    ({"purge_backoff": 10, "purge_backoff_max": 5}, "server.purge_backoff_max"),
])
def test_invalid_limits_name_their_key(server: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        from_mapping({"server": server})
    assert raised.value.key == key


def test_the_limits_have_safe_defaults() -> None:
    s = from_mapping({}).server
    assert (s.header_timeout, s.max_head_size, s.max_connections, s.admin_max_connections) == (10.0, 131072, 1024, 16)
    assert s.purge_peers == ("127.0.0.1/32", "::1/128")
