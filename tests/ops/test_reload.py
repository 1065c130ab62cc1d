"""SIGHUP on the real process: the configuration is read again and swapped in under load without a
failed check; a change that needs a restart, or an invalid one, keeps the running configuration.

The sidecar runs as the container runs it (``python -m sidecar --config FILE``) against the fake
IdP over real mutual TLS; the load is a bounded number of concurrent keep-alive clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.dev.fakeidp import FakeIdp
from tests.conftest import escaped_pem
from tests.support.pki_fixtures import TestPki
from tests.support.ports import free_port, free_ports
from tests.support.sidecar_process import Process, running_sidecar

pytestmark = pytest.mark.ops
CLIENTS = 16
BOUND = 4000  # checks at most, whatever happens (a load loop is bounded)


def write_config(path: Path, pki: TestPki, idp: FakeIdp, port: int, admin: int, **policy: Any) -> None:
    scopes = json.dumps(policy.get("required_scopes", []))
    path.write_text(
        f'[server]\nport = {port}\nadmin_port = {admin}\nshutdown_grace = 2.0\n\n'
        f'[idp]\nissuer = "{idp.issuer}"\nclient_id = "sidecar"\ncert_file = "{pki.sidecar_files[0]}"\n'
        f'key_file = "{pki.sidecar_files[1]}"\nca_file = "{pki.ca_file}"\ntimeout = 5.0\n\n'
        f'[log]\ndecisions = "off"\n\n'  # stderr is read at exit: a load's lines would fill the pipe
        f'[policy]\nrequired_scopes = {scopes}\n')


@pytest.fixture
def configured(tmp_path: Path, pki: TestPki, idp: FakeIdp) -> tuple[Path, dict[str, str]]:
    port, admin = free_port(), free_port()
    path = tmp_path / "sidecar.toml"
    write_config(path, pki, idp, port, admin)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.update(SIDECAR_SERVER__PORT=str(port), SIDECAR_SERVER__ADMIN_PORT=str(admin))
    return path, env


async def metric(process: Process, name: str) -> float:
    async with aiohttp.ClientSession() as client, client.get(f"{process.admin_url}/metrics") as response:
        text = await response.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def test_sighup_under_load_swaps_in_a_new_required_scope_without_a_failed_check(
        configured: tuple[Path, dict[str, str]], pki: TestPki, idp: FakeIdp) -> None:
    path, env = configured
    cert = escaped_pem(pki.alice)
    both = idp.mint("alice", cnf=pki.alice.x5t_s256, scope="read write")
    read_only = idp.mint("alice", cnf=pki.alice.x5t_s256, scope="read")
    answers: dict[str, list[int | str]] = {both: [], read_only: []}
    stop = asyncio.Event()
    sent = 0

    async with running_sidecar(env, "--config", str(path)) as process:
        async def client(session: aiohttp.ClientSession, token: str) -> None:
            nonlocal sent
            headers = {"Authorization": f"Bearer {token}", "x-client-cert": cert}
            while not stop.is_set() and sent < BOUND:
                sent += 1
                try:
                    async with session.get(process.check_url, headers=headers) as response:
                        answers[token].append(response.status)
                except aiohttp.ClientError as exc:
                    answers[token].append(type(exc).__name__)

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CLIENTS)) as session:
            load = [asyncio.create_task(client(session, both if n % 2 else read_only)) for n in range(CLIENTS)]
            while len(answers[read_only]) < 100:  # the load runs on the first configuration
                await asyncio.sleep(0.01)
            introspections = idp.introspect_requests
            write_config(path, pki, idp, int(env["SIDECAR_SERVER__PORT"]), int(env["SIDECAR_SERVER__ADMIN_PORT"]),
                         required_scopes=["write"])
            process.popen.send_signal(signal.SIGHUP)
            for _ in range(500):  # the swap: the read-only token is denied from then on
                if answers[read_only][-1] == 403:
                    break
                await asyncio.sleep(0.01)
            mark = len(answers[read_only])
            while len(answers[read_only]) < mark + 100:  # and the load goes on on the new one
                await asyncio.sleep(0.01)
            stop.set()
            await asyncio.gather(*load)
        assert await metric(process, 'sidecar_config_reloads_total{result="ok"}') == 1
        assert await metric(process, "sidecar_config_last_reload_successful") == 1

    assert Counter(answers[both]) == {200: len(answers[both])}, Counter(answers[both])  # not one failed check
    statuses = answers[read_only]
    first_denied = statuses.index(403)
    assert set(statuses[:first_denied]) == {200} and set(statuses[first_denied:]) == {403}, Counter(statuses)
    assert first_denied >= 100 and len(statuses) - first_denied >= 100
    # The cached IdP answers went over to the new configuration: the reload asked the IdP nothing.
    assert idp.introspect_requests == introspections == 2
    lines = [line for line in process.logs() if line.get("msg") == "configuration reloaded"]
    assert len(lines) == 1


async def test_a_reload_that_changes_a_port_is_refused_naming_the_key_and_the_running_one_stays(
        configured: tuple[Path, dict[str, str]], pki: TestPki, idp: FakeIdp) -> None:
    path, env = configured
    async with running_sidecar(env, "--config", str(path)) as process:
        text = path.read_text().replace("shutdown_grace = 2.0", "shutdown_grace = 2.0\ngrpc_port = 1")
        path.write_text(text.replace("[policy]\nrequired_scopes = []", '[policy]\nrequired_scopes = ["write"]'))
        process.popen.send_signal(signal.SIGHUP)
        for _ in range(300):
            if await metric(process, 'sidecar_config_reloads_total{result="refused"}') == 1:
                break
            await asyncio.sleep(0.05)
        assert await metric(process, "sidecar_config_last_reload_successful") == 0
        token = idp.mint("alice", cnf=pki.alice.x5t_s256, scope="read")
        async with aiohttp.ClientSession() as session, session.get(process.check_url, headers={
                "Authorization": f"Bearer {token}", "x-client-cert": escaped_pem(pki.alice)}) as response:
            assert response.status == 200  # the running configuration: no scope required
        process.popen.send_signal(signal.SIGTERM)
        process.popen.wait(timeout=20)
    refused = [line for line in process.logs() if line.get("result") == "refused"]
    assert len(refused) == 1 and refused[0]["key"] == "server.grpc_port", refused
    assert "needs a restart" in refused[0]["error"] and refused[0]["level"] == "error"


@pytest.mark.parametrize(("change", "key"), [
    ('[policy]\nrequired_scopes = ["no spaces allowed"]', "policy.required_scopes"),
    ("[policy]\nrequired_scops = []", "policy.required_scops"),
    ("[policy\n", "config"),
])
async def test_an_invalid_reload_keeps_the_running_configuration_and_says_why(
        configured: tuple[Path, dict[str, str]], pki: TestPki, idp: FakeIdp, change: str, key: str) -> None:
    path, env = configured
    async with running_sidecar(env, "--config", str(path)) as process:
        path.write_text(path.read_text().replace("[policy]\nrequired_scopes = []", change))
        process.popen.send_signal(signal.SIGHUP)
        for _ in range(300):
            if await metric(process, 'sidecar_config_reloads_total{result="failed"}') == 1:
                break
            await asyncio.sleep(0.05)
        token = idp.mint("alice", cnf=pki.alice.x5t_s256)
        async with aiohttp.ClientSession() as session, session.get(process.check_url, headers={
                "Authorization": f"Bearer {token}", "x-client-cert": escaped_pem(pki.alice)}) as response:
            assert response.status == 200
        process.popen.send_signal(signal.SIGTERM)
        assert process.popen.wait(timeout=20) == 0
    failed = [line for line in process.logs() if line.get("result") == "failed"]
    assert len(failed) == 1 and failed[0]["key"] == key and failed[0]["error"].startswith(key), failed


async def test_with_two_workers_sighup_to_the_parent_reloads_every_worker(
        tmp_path: Path, pki: TestPki, idp: FakeIdp) -> None:
    port, admin = free_ports(1), free_ports(2)
    path = tmp_path / "sidecar.toml"
    write_config(path, pki, idp, port, admin)
    path.write_text(path.read_text().replace("shutdown_grace = 2.0", "shutdown_grace = 2.0\nworkers = 2"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.update(SIDECAR_SERVER__PORT=str(port), SIDECAR_SERVER__ADMIN_PORT=str(admin))
    read_only = idp.mint("alice", cnf=pki.alice.x5t_s256, scope="read")
    headers = {"Authorization": f"Bearer {read_only}", "x-client-cert": escaped_pem(pki.alice)}
    async with running_sidecar(env, "--config", str(path)) as process:
        workers = [Process(process.popen, process.check_url, f"http://127.0.0.1:{admin + i}") for i in range(2)]
        for _ in range(300):  # the second worker's admin port
            with contextlib.suppress(aiohttp.ClientError):
                if await metric(workers[1], "sidecar_ready") == 1:
                    break
            await asyncio.sleep(0.1)
        write_config(path, pki, idp, port, admin, required_scopes=["write"])
        path.write_text(path.read_text().replace("shutdown_grace = 2.0", "shutdown_grace = 2.0\nworkers = 2"))
        process.popen.send_signal(signal.SIGHUP)
        for worker in workers:
            for _ in range(300):
                if await metric(worker, 'sidecar_config_reloads_total{result="ok"}') == 1:
                    break
                await asyncio.sleep(0.05)
            assert await metric(worker, 'sidecar_config_reloads_total{result="ok"}') == 1
        statuses = []
        for _ in range(20):  # a new connection each time: the kernel spreads them over both workers
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh, \
                    fresh.get(process.check_url, headers=headers) as response:
                statuses.append(response.status)
        assert statuses == [403] * 20  # the new required scope, whichever worker answers
        assert sum([await metric(worker, 'sidecar_decisions_total{outcome="deny"') for worker in workers]) == 20
        assert all([await metric(worker, 'sidecar_decisions_total{outcome="deny"') for worker in workers])
        process.popen.send_signal(signal.SIGTERM)
        assert process.popen.wait(timeout=20) == 0
