"""DPoP proofs across a fleet (RFC 9449 §11.1): a proof accepted by one replica is a replay on
every other, through the decision itself (HTTP check route, real Redis, the fake IdP over mutual
TLS). Without Redis each replica still refuses a replay it saw itself."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.dev.fakeidp import FakeIdp
from sidecar.dev.redis import RedisServer
from tests.fleet.conftest import MakeReplica, events
from tests.support.dpop_proof import DpopKey

pytestmark = pytest.mark.fleet
URL = "https://api.example:8443/orders"
ORIGINAL = {"X-Original-Method": "GET", "X-Original-URI": "/orders", "Host": "api.example:8443",
            "X-Forwarded-Proto": "https"}


def dpop_token(idp: FakeIdp, key: DpopKey) -> str:
    token = idp.mint("alice", token_type="DPoP")
    idp.tokens[token]["cnf"] = {"jkt": key.jkt}
    return token


async def check(replica: Any, token: str, proof: str) -> tuple[int, str]:
    response = await replica.client.get("/check", headers={"Authorization": f"DPoP {token}", "DPoP": proof,
                                                           **ORIGINAL})
    body = await response.json() if response.status != 200 else {}
    return response.status, body.get("reason", "")


async def test_a_proof_accepted_by_one_replica_is_a_replay_on_every_other(
    make_replica: MakeReplica, idp: FakeIdp, redis_server: RedisServer
) -> None:
    replicas = [await make_replica(dpop={"enabled": True}) for _ in range(3)]
    key = DpopKey()
    token = dpop_token(idp, key)
    proof = key.proof("GET", URL, token)
    assert await check(replicas[0], token, proof) == (200, "")
    for replica in replicas:  # the first one from its own memory, the others from Redis
        assert await check(replica, token, proof) == (401, "dpop_replayed")
    # A fresh proof is accepted anywhere, once: on a cache hit as on a miss.
    second = key.proof("GET", URL, token)
    assert await check(replicas[2], token, second) == (200, "")
    assert await check(replicas[1], token, second) == (401, "dpop_replayed")
    names = redis_server.cli("--scan")
    assert names.count("sidecar:r:") == 2 and "jti" not in names


async def test_with_redis_down_a_replica_still_refuses_a_replay_it_saw_and_allows_fresh_proofs(
    make_replica: MakeReplica, idp: FakeIdp, redis_server: RedisServer
) -> None:
    replica = await make_replica(dpop={"enabled": True})
    key = DpopKey()
    token = dpop_token(idp, key)
    assert await check(replica, token, key.proof("GET", URL, token)) == (200, "")  # the token is cached now
    redis_server.kill()
    proof = key.proof("GET", URL, token)
    assert await check(replica, token, proof) == (200, "")
    assert await check(replica, token, proof) == (401, "dpop_replayed")
    assert events(replica, "error") >= 1
