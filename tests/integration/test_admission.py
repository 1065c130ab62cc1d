"""One client flooding the sidecar with new tokens cannot starve the others (issue 11, items 3,
9, 10): its misses are rate-limited per source (429), others' new tokens still reach the IdP,
and the breaker stays closed because a refusal of ours is not an IdP failure."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from sidecar.dev.fakeidp import FakeIdp, Fault
from tests.conftest import MakeSidecar
from tests.support.pki_fixtures import TestPki

ATTACKER, CLIENT = "198.51.100.66", "198.51.100.7"


async def test_a_flooding_source_is_limited_while_another_sources_new_token_passes(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar(admission={"miss_rate": 5, "miss_burst": 5, "max_share": 0.25},
                                 cache={"negative_max_entries": 50, "max_entries": 100})
    idp.fault = Fault(delay=0.05)  # a healthy IdP answering in 50 ms

    async def random_token() -> int:
        response = await running.client.get("/", headers={"Authorization": f"Bearer {secrets.token_urlsafe(24)}",
                                                          "X-Forwarded-For": f"203.0.113.1, {ATTACKER}"})
        return response.status

    statuses = await asyncio.gather(*(random_token() for _ in range(120)))
    assert statuses.count(429) >= 100 and set(statuses) <= {401, 429}
    assert idp.introspect_requests <= 10  # the burst and the share, not one call per request

    legit = idp.mint("alice", cnf=pki.alice.x5t_s256)
    response = await running.check(legit, pki.alice, **{"X-Forwarded-For": CLIENT})
    assert response.status == 200
    assert running.sidecar.issuer.guard.breaker.state == 0  # closed: our refusals are not IdP failures
    metrics = await (await running.admin.get("/metrics")).text()
    assert 'sidecar_decisions_total{outcome="deny",policy="default",reason="rate_limited"}' in metrics


async def test_the_forwarded_source_is_honoured_only_from_a_trusted_proxy(
    make_sidecar: MakeSidecar, idp: FakeIdp
) -> None:
    running = await make_sidecar(admission={"miss_rate": 1, "miss_burst": 1},
                                 client_cert={"trusted_proxies": ["192.0.2.0/24"]})
    statuses = []
    for index in range(5):  # the test client (127.0.0.1) is not trusted: it is the source, whatever it says
        response = await running.client.get("/", headers={"Authorization": f"Bearer {secrets.token_urlsafe(24)}",
                                                          "X-Forwarded-For": f"198.51.100.{index}"})
        statuses.append(response.status)
    assert statuses == [401, 429, 429, 429, 429] and idp.introspect_requests == 1


async def test_a_trusted_proxy_that_sends_no_source_header_is_one_source_for_all_its_clients(
    make_sidecar: MakeSidecar, idp: FakeIdp, captured_logs: Any
) -> None:
    running = await make_sidecar(admission={"miss_rate": 1, "miss_burst": 2})
    statuses = []
    for _ in range(5):  # random tokens, no X-Forwarded-For: bounded all the same
        response = await running.client.get("/", headers={"Authorization": f"Bearer {secrets.token_urlsafe(24)}"})
        statuses.append(response.status)
    assert statuses == [401, 401, 429, 429, 429] and idp.introspect_requests == 2
    assert sum("sends no source header" in r.getMessage() for r in captured_logs.records) == 1


async def test_cached_tokens_keep_working_during_a_flood_of_random_tokens(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar(cache={"max_entries": 50, "negative_max_entries": 20})
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    assert (await running.check(token, pki.alice)).status == 200
    for i in range(200):  # inactive answers fill their own store only
        await running.client.get("/", headers={"Authorization": f"Bearer random-{i}",
                                               "X-Forwarded-For": f"198.51.100.{i % 200}"})
    calls = idp.introspect_requests
    assert (await running.check(token, pki.alice)).status == 200
    assert idp.introspect_requests == calls  # still a cache hit
