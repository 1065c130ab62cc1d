"""DPoP server nonces across a fleet (RFC 9449 §9, ``dpop.nonce``): a nonce one replica hands out is
accepted by every other, through the decision itself (HTTP check route, real Redis, the fake IdP
over mutual TLS). The nonces need no Redis: they are keyed by the fleet's secret, which every
replica holds; a replica of another fleet (another secret) refuses them."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from sidecar.dev.fakeidp import FakeIdp
from sidecar.dev.redis import RedisServer
from tests.fleet.conftest import MakeReplica
from tests.support.dpop_proof import DpopKey

pytestmark = [pytest.mark.fleet, pytest.mark.dpop]
URL = "https://api.example:8443/orders"
ORIGINAL = {"X-Original-Method": "GET", "X-Original-URI": "/orders", "Host": "api.example:8443",
            "X-Forwarded-Proto": "https"}
NONCES = {"enabled": True, "nonce": "required"}


def dpop_token(idp: FakeIdp, key: DpopKey) -> str:
    token = idp.mint("alice", token_type="DPoP")
    idp.tokens[token]["cnf"] = {"jkt": key.jkt}
    return token


async def check(replica: Any, token: str, proof: str) -> tuple[int, str, str | None]:
    response = await replica.client.get("/check", headers={"Authorization": f"DPoP {token}", "DPoP": proof,
                                                           **ORIGINAL})
    body = await response.json() if response.status != 200 else {}
    return response.status, body.get("reason", ""), response.headers.get("DPoP-Nonce")


async def test_a_nonce_one_replica_hands_out_is_accepted_by_every_other(
    make_replica: MakeReplica, idp: FakeIdp, redis_server: RedisServer
) -> None:
    replicas = [await make_replica(dpop=NONCES) for _ in range(3)]
    key = DpopKey()
    token = dpop_token(idp, key)
    status, reason, nonce = await check(replicas[0], token, key.proof("GET", URL, token))
    assert (status, reason) == (401, "dpop_nonce_missing") and nonce
    for replica in replicas:  # the nonce replica 0 issued, on every replica (and each a fresh proof)
        status, reason, answered = await check(replica, token, key.proof("GET", URL, token, nonce=nonce))
        assert (status, reason) == (200, "") and answered == nonce  # within a quarter: the same nonce
    redis_server.kill()  # nonces need nothing from Redis
    status, _, _ = await check(replicas[2], token, key.proof("GET", URL, token, nonce=nonce))
    assert status == 200


async def test_a_replica_of_another_fleet_refuses_the_nonce(
    make_replica: MakeReplica, idp: FakeIdp, tmp_path: Path
) -> None:
    ours = await make_replica(dpop=NONCES)
    other_secret = tmp_path / "another-fleet-secret"
    other_secret.write_text(secrets.token_urlsafe(32))
    theirs = await make_replica(dpop=NONCES, secret_file=str(other_secret))
    key = DpopKey()
    token = dpop_token(idp, key)
    _, _, nonce = await check(ours, token, key.proof("GET", URL, token))
    status, reason, answered = await check(theirs, token, key.proof("GET", URL, token, nonce=nonce))
    assert (status, reason) == (401, "dpop_nonce_invalid") and answered and answered != nonce
