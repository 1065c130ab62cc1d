"""The Redis deployments a fleet meets: a Redis Cluster (three nodes on loopback), ACL users,
TLS with client certificates, and Sentinel."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.config import ConfigError
from sidecar.dev.fakeidp import FakeIdp, Fault
from sidecar.dev.redis import DATA, RedisServer
from tests.conftest import MakeSidecar
from tests.fleet.conftest import ADMIN, ADMIN_SECRET, FleetFiles, events, fleet_of, wait_subscribed
from tests.fleet.redis_server import start_cluster
from tests.support.pki_fixtures import TestPki
from tests.support.ports import free_port

pytestmark = pytest.mark.fleet


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[RedisServer]]:
    servers = start_cluster(tmp_path / "cluster")
    yield servers
    for server in servers:
        server.kill()


# The ACL docs/fleet.md lists for the sidecar's user (commands a script calls count too).
FLEET_ACL = ("+get", "+set", "+type", "+pttl", "+evalsha", "+script|load", "+del", "+unlink", "+publish",
             "+subscribe", "+ping", "+hello", "+auth")  # no +client: no CLIENT KILL


def section(files: FleetFiles, url: str, **extra: object) -> dict[str, object]:
    return {"enabled": True, "url": url, "secret_file": str(files.secret), "seal_key_file": str(files.key),
            "timeout": 0.5, "clock_skew": 0.0, **extra}  # one host: one clock


async def test_replicas_share_answers_and_purges_through_a_three_node_cluster(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, cluster: list[RedisServer], fleet_files: FleetFiles
) -> None:
    replicas = []
    for i in range(2):  # each replica knows a different node of the cluster
        replicas.append(await make_sidecar(fleet=section(fleet_files, cluster[i].url, mode="cluster"),
                                           server={"admin_secret": ADMIN_SECRET}))
        await wait_subscribed(replicas[-1], 10)
    a, b = replicas
    tokens = [idp.mint("alice", cnf=pki.alice.x5t_s256) for _ in range(12)]
    for token in tokens:
        assert (await a.check(token, pki.alice)).status == 200
        assert (await b.check(token, pki.alice)).status == 200
    assert idp.introspect_requests == 12 and events(b, "hit") == 12
    nodes_used = [int(s.cli("dbsize")) for s in cluster]
    assert sum(nodes_used) == 12 and sum(1 for n in nodes_used if n) >= 2  # spread over the slots
    idp.tokens.pop(tokens[0])
    response = await b.admin.post("/purge", json={"all": True}, headers=ADMIN)
    assert await response.json() == {"purged": 12, "fleet": True}
    async with asyncio.timeout(3):
        while len(a.sidecar.decider.cache):
            await asyncio.sleep(0.01)
    assert (await a.check(tokens[0], pki.alice)).status == 401  # its value in Redis predates the purge
    assert events(a, "predates_purge") == 1


async def test_an_acl_user_is_required_and_a_wrong_password_never_allows(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, fleet_files: FleetFiles, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "acl", free_port(), extra=(
        *DATA, "--user", "default", "off",
        "--user", "sidecar", "on", ">sidecar-password-0123", "~sidecar:*", "&sidecar:*",
        *FLEET_ACL,
    )).start()
    try:
        password_file = tmp_path / "redis-password"
        password_file.write_text("sidecar-password-0123\n")
        good, other = [await make_sidecar(fleet=section(fleet_files, server.url, username="sidecar",
                                                        password_file=str(password_file)),
                                          server={"admin_secret": ADMIN_SECRET}) for _ in range(2)]
        await wait_subscribed(good)
        await wait_subscribed(other)
        wrong = await make_sidecar(fleet=section(fleet_files, server.url, username="sidecar",
                                                 password="not-the-password"))
        token = idp.mint("alice", cnf=pki.alice.x5t_s256)
        idp.fault = Fault(delay=0.2)  # both replicas at once: one takes the lock, the other finds it held
        assert [r.status for r in await asyncio.gather(good.check(token, pki.alice), other.check(token, pki.alice))] \
            == [200, 200]
        idp.fault = None
        assert idp.introspect_requests == 1 and events(good, "error") == events(other, "error") == 0
        assert (await (await good.admin.post("/purge", json={"token": token}, headers=ADMIN)).json())["fleet"]
        revoked = idp.mint("alice", cnf=pki.alice.x5t_s256)
        idp.tokens.pop(revoked)
        assert (await wrong.check(revoked, pki.alice)).status == 401
        assert (await wrong.check(token, pki.alice)).status == 200  # the IdP answers, not Redis
        assert events(wrong, "error") >= 1 and events(wrong, "hit") == 0
    finally:
        server.kill()


async def test_redis_over_tls_with_a_client_certificate(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, fleet_files: FleetFiles, tmp_path: Path
) -> None:
    cert, key = pki.idp_files  # a server certificate for 127.0.0.1 from the test CA
    server = RedisServer(tmp_path / "tls", free_port(), tls=True, extra=(
        *DATA, "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(pki.ca_file),
        "--tls-auth-clients", "yes",
    )).start()
    try:
        tls = {"ca_file": str(pki.ca_file), "cert_file": str(pki.sidecar_files[0]),
               "key_file": str(pki.sidecar_files[1])}
        a = await make_sidecar(fleet=section(fleet_files, server.url, **tls))
        b = await make_sidecar(fleet=section(fleet_files, server.url, **tls))
        await wait_subscribed(a, 10)
        token = idp.mint("alice", cnf=pki.alice.x5t_s256)
        assert (await a.check(token, pki.alice)).status == 200
        assert (await b.check(token, pki.alice)).status == 200
        assert idp.introspect_requests == 1 and events(b, "hit") == 1
        no_cert = await make_sidecar(fleet=section(fleet_files, server.url, ca_file=str(pki.ca_file)))
        assert (await no_cert.check(token, pki.alice)).status == 200  # refused by Redis: the IdP answers
        assert events(no_cert, "error") == 1 and idp.introspect_requests == 2
    finally:
        server.kill()


async def test_replicas_find_the_master_through_sentinel(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, fleet_files: FleetFiles, tmp_path: Path
) -> None:
    master = RedisServer(tmp_path / "master", free_port()).start()
    sentinel_dir = tmp_path / "sentinel"
    sentinel_dir.mkdir()
    conf = sentinel_dir / "sentinel.conf"
    conf.write_text(f"sentinel monitor fleet 127.0.0.1 {master.port} 1\n")
    sentinel = RedisServer(sentinel_dir, free_port(), config=conf, extra=("--sentinel",))
    try:
        sentinel.start()
        fleet = {"mode": "sentinel", "sentinels": [f"127.0.0.1:{sentinel.port}"], "sentinel_master": "fleet"}
        a = await make_sidecar(fleet=section(fleet_files, "redis://127.0.0.1:1/0", **fleet))
        b = await make_sidecar(fleet=section(fleet_files, "redis://127.0.0.1:1/0", **fleet))
        await wait_subscribed(b, 10)  # a replica reads shared answers only while it hears purges
        token = idp.mint("alice", cnf=pki.alice.x5t_s256)
        assert (await a.check(token, pki.alice)).status == 200
        assert (await b.check(token, pki.alice)).status == 200
        assert idp.introspect_requests == 1 and events(b, "hit") == 1
        assert int(master.cli("dbsize")) == 1
        assert fleet_of(a).names.prefix == "sidecar:"
    finally:
        sentinel.kill()
        master.kill()


@pytest.mark.parametrize(("fleet", "message"), [
    ({"enabled": True}, "fleet.secret_file: is required"),
    ({"url": "redis://user:pw@127.0.0.1:6379/0"}, "fleet.url: must be a redis:// or rediss:// URL without"),
    ({"lock_wait": 5.0}, "fleet.lock_wait: must be at most idp.timeout"),
    ({"mode": "sentinel"}, "fleet.sentinels: is required"),
    ({"ca_file": "__ca__"}, "fleet.url: must be rediss://"),
    ({"prefix": "a{b}"}, "fleet.prefix: must be 1-64 printable"),
])
def test_a_fleet_configuration_that_cannot_work_is_refused_at_start(
    fleet: dict[str, object], message: str, fleet_files: FleetFiles, pki: TestPki, idp: FakeIdp
) -> None:
    from tests.conftest import sidecar_config

    values = {k: str(pki.ca_file) if v == "__ca__" else v for k, v in fleet.items()}
    base = {} if fleet == {"enabled": True} else section(fleet_files, "redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        sidecar_config(pki, idp, fleet={**base, **values})


def test_a_fleet_secret_file_shorter_than_32_characters_is_refused_at_start(
    fleet_files: FleetFiles, pki: TestPki, idp: FakeIdp, tmp_path: Path
) -> None:
    from tests.conftest import sidecar_config

    short = tmp_path / "short"
    short.write_text("too-short\n")
    with pytest.raises(ConfigError, match=r"fleet\.previous_seal_key_file: the file must hold at least 32"):
        sidecar_config(pki, idp, fleet={**section(fleet_files, "redis://127.0.0.1:6379/0"),
                                        "previous_seal_key_file": str(short)})
