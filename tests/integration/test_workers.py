"""server.workers: several processes share the check port (SO_REUSEPORT), each with its own
cache and admin port (admin_port + i), against the fake IdP over real mutual TLS."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from sidecar.config import ConfigError, from_mapping
from sidecar.dev.fakeidp import FakeIdp
from tests.conftest import escaped_pem
from tests.support.pki_fixtures import TestPki
from tests.support.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]


def test_several_workers_need_a_fixed_port_and_admin_ports_apart_from_it() -> None:
    with pytest.raises(ConfigError, match=r"^server\.workers"):
        from_mapping({"server": {"workers": 2, "port": 0}})
    with pytest.raises(ConfigError, match=r"^server\.admin_port"):
        from_mapping({"server": {"workers": 3, "port": 9002, "admin_port": 9001}})
    with pytest.raises(ConfigError, match=r"^server\.workers"):
        from_mapping({"server": {"workers": 0}})
    assert from_mapping({"server": {"workers": 2, "port": 9000, "admin_port": 9001}}).server.workers == 2


async def _allowed(admin_port: int) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{admin_port}/metrics") as r:
        text = await r.text()
    match = re.search(r'sidecar_decisions_total\{outcome="allow",policy="default",reason="ok"\} (\S+)', text)
    return float(match.group(1)) if match else 0.0


async def test_two_workers_share_the_check_port_each_with_its_own_cache_and_admin_port(
    idp: FakeIdp, pki: TestPki, tmp_path: Path
) -> None:
    port, admin = free_ports(1), free_ports(2)
    config = tmp_path / "sidecar.toml"
    config.write_text(
        f'[server]\nport = {port}\nadmin_port = {admin}\nworkers = 2\nshutdown_grace = 1\n'
        f'[idp]\nissuer = "{idp.issuer}"\nclient_id = "sidecar"\ncert_file = "{pki.sidecar_files[0]}"\n'
        f'key_file = "{pki.sidecar_files[1]}"\nca_file = "{pki.ca_file}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    process = subprocess.Popen([sys.executable, "-m", "sidecar", "serve", "--config", str(config)], cwd=ROOT,
                               env=env, stderr=subprocess.PIPE, text=True)
    try:
        async with aiohttp.ClientSession() as session:
            for worker in range(2):
                for _ in range(200):
                    try:
                        async with session.get(f"http://127.0.0.1:{admin + worker}/readyz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.05)
            token = idp.mint("alice", cnf=pki.alice.x5t_s256)
            headers = {"Authorization": f"Bearer {token}", "x-client-cert": escaped_pem(pki.alice)}
            for _ in range(40):  # a new connection each time: the kernel spreads them over the workers
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh, \
                        fresh.get(f"http://127.0.0.1:{port}/check", headers=headers) as r:
                    assert r.status == 200
            per_worker = [await _allowed(admin), await _allowed(admin + 1)]
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert sum(per_worker) == 40 and min(per_worker) > 0, per_worker
    assert idp.introspect_requests == 2  # one cache per worker: one IdP call each for a new token
    assert process.returncode == 0, stderr
    assert token not in stderr
