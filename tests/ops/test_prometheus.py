"""Debian's Prometheus and the shipped monitoring files against a real sidecar process.

- ``promtool check rules`` and ``promtool test rules`` pass on deploy/prometheus/sidecar-alerts.yml
  (the cases: tests/ops/sidecar-alerts.test.yml);
- a real ``prometheus`` scrapes the sidecar's admin port, loads those rules and evaluates them
  without error, and every query of every panel of deploy/grafana/sidecar-dashboard.json (with
  Grafana's variables filled in as Grafana would) returns data while checks flow.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from sidecar.dev.fakeidp import FakeIdp
from tests.conftest import escaped_pem
from tests.support.pki_fixtures import TestPki
from tests.support.ports import free_port
from tests.support.sidecar_process import Process, running_sidecar

pytestmark = pytest.mark.ops
ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "sidecar-alerts.yml"
RULE_TESTS = Path(__file__).resolve().parent / "sidecar-alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "sidecar-dashboard.json"
JOB = "sidecar"
# Grafana's variables as Grafana fills them in: the job, every instance ("All"), the rate window
# (four scrape intervals at least: the scrapes here are 1 s apart).
VARIABLES = {"$job": JOB, "$instance": ".+", "$__rate_interval": "10s"}


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} comes with Debian's prometheus package (./test.sh installs it)"
    return found


def test_the_shipped_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    checked = subprocess.run([tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0 and "SUCCESS: 7 rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = subprocess.run([tool("promtool"), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, query) of every target of every panel, Grafana's variables filled in."""
    found = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            query = target["expr"]
            for name, value in VARIABLES.items():
                query = query.replace(name, value)
            assert "$" not in query, f"{panel['title']}: a variable the test does not fill in: {query}"
            found.append((panel["title"], query))
    return found


def test_every_panel_of_the_dashboard_has_a_query_and_every_query_reads_a_sidecar_metric() -> None:
    panels = [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]
    assert panels and all(p.get("targets") for p in panels)
    assert all("sidecar_" in query or "process_" in query for _, query in dashboard_queries())


class Prometheus:
    def __init__(self, directory: Path, target: str) -> None:
        self.port = free_port()
        config = directory / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: ['{RULES}']\n"
            f"scrape_configs:\n- job_name: {JOB}\n  static_configs:\n  - targets: ['{target}']\n")
        self.log = directory / "prometheus.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT, cwd=directory)

    async def get(self, path: str) -> Any:
        async with aiohttp.ClientSession() as client, client.get(f"http://127.0.0.1:{self.port}{path}") as reply:
            body = await reply.json()
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, query: str) -> list[Any]:
        data = await self.get(f"/api/v1/query?query={quote(query)}")
        return list(data["result"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


@pytest.fixture
async def sidecar(pki: TestPki, idp: FakeIdp, tmp_path: Path) -> AsyncIterator[Process]:
    path = tmp_path / "sidecar.toml"
    path.write_text(
        f'[idp]\nissuer = "{idp.issuer}"\nclient_id = "sidecar"\ncert_file = "{pki.sidecar_files[0]}"\n'
        f'key_file = "{pki.sidecar_files[1]}"\nca_file = "{pki.ca_file}"\n\n[log]\ndecisions = "off"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.update(SIDECAR_SERVER__PORT=str(free_port()), SIDECAR_SERVER__ADMIN_PORT=str(free_port()))
    async with running_sidecar(env, "--config", str(path)) as process:
        yield process


@pytest.fixture
def prometheus(sidecar: Process, tmp_path: Path) -> Iterator[Prometheus]:
    started = Prometheus(tmp_path, sidecar.admin_url.removeprefix("http://"))
    yield started
    started.stop()


async def traffic(sidecar: Process, idp: FakeIdp, pki: TestPki, until: float) -> None:
    """Allowed hits, new tokens (IdP calls) and denials, until ``until`` (bounded)."""
    cert, other = escaped_pem(pki.alice), escaped_pem(pki.bob)
    cached = idp.mint("alice", cnf=pki.alice.x5t_s256)
    async with aiohttp.ClientSession() as client:
        for n in range(2000):
            if time.monotonic() > until:
                return
            token = cached if n % 3 else idp.mint("alice", cnf=pki.alice.x5t_s256)
            headers = {"Authorization": f"Bearer {token}", "x-client-cert": other if n % 5 == 0 else cert}
            async with client.get(sidecar.check_url, headers=headers) as reply:
                assert reply.status in (200, 401)
            await asyncio.sleep(0.01)


async def test_prometheus_scrapes_the_sidecar_evaluates_the_rules_and_every_dashboard_query_returns_data(
        sidecar: Process, prometheus: Prometheus, idp: FakeIdp, pki: TestPki) -> None:
    sidecar.popen.send_signal(signal.SIGHUP)  # a reload: its counter has a series to show
    load = asyncio.create_task(traffic(sidecar, idp, pki, time.monotonic() + 60))
    try:
        for _ in range(400):  # the first scrapes (bounded)
            if await _ready(prometheus) and len(await prometheus.query("sidecar_build_info[10s]")) \
                    and len((await prometheus.query("sidecar_build_info[10s]"))[0]["values"]) >= 5:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(prometheus.log.read_text())
        (up,) = await prometheus.query(f'up{{job="{JOB}"}}')
        assert up["value"][1] == "1"
        (build,) = await prometheus.query("sidecar_build_info")
        assert build["metric"]["version"] and build["metric"]["python"]
        assert await prometheus.query('{__name__=~".+_created"}') == []  # no doubled counters
        empty = [(title, query) for title, query in dashboard_queries() if not await prometheus.query(query)]
        assert empty == [], empty
        jobs = await prometheus.get(f"/api/v1/label/job/values?match[]={quote('sidecar_build_info')}")
        assert jobs == [JOB]  # the dashboard's job variable
        groups = (await prometheus.get("/api/v1/rules"))["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert len(rules) == 7 and all(rule["health"] == "ok" for rule in rules), rules
        assert all(rule["lastEvaluation"] != "0001-01-01T00:00:00Z" for rule in rules)
        # A healthy sidecar whose IdP client certificate (the test PKI's: 7 days) expires within the
        # rule's 7 days: that alert alone is on its way, from the sidecar's own figure.
        assert [r["name"] for r in rules if r["state"] != "inactive"] == ["SidecarClientCertificateExpiring"]
    finally:
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)


async def _ready(prometheus: Prometheus) -> bool:
    try:
        async with aiohttp.ClientSession() as client, client.get(
                f"http://127.0.0.1:{prometheus.port}/-/ready") as reply:
            return reply.status == 200
    except aiohttp.ClientError:
        return False
