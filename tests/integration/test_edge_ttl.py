"""How long a proxy's decision cache may keep an answer: ``X-Accel-Expires`` on every answer of the
HTTP check port (``response.edge_ttl``; deploy/nginx/api-edge-cache.conf.template is the proxy).

An allow says ``@S``, the last whole Unix second nginx may answer with it: at most ``edge_ttl``
seconds from the answer, never past the token's ``exp``. Everything else says ``0``: denials
(which also keep ``Cache-Control: no-store``), 429, 503, stale answers, DPoP-bound tokens, an allow
that names forged headers, and every answer while ``edge_ttl`` is 0 (the default).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from sidecar.dev.fakeidp import FakeIdp, Fault
from tests.conftest import MakeSidecar, Running
from tests.support.dpop_proof import DpopKey
from tests.support.pki_fixtures import TestPki

EDGE = {"edge_ttl": 5}


def expires(response: Any) -> str:
    values = response.headers.getall("X-Accel-Expires")
    assert len(values) == 1, values
    return str(values[0])


async def test_an_allow_may_be_kept_for_at_most_the_edge_ttl(make_sidecar: MakeSidecar, idp: FakeIdp,
                                                             pki: TestPki) -> None:
    running = await make_sidecar(response=EDGE)
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    for _ in range(2):  # a miss, then a cache hit
        before = math.floor(time.time())
        response = await running.check(token, pki.alice)
        after = math.floor(time.time())
        assert response.status == 200 and expires(response).startswith("@")
        # nginx keeps an entry until its second is over: the last second is edge_ttl - 1 after this one.
        assert before + 4 <= int(expires(response).removeprefix("@")) <= after + 4


async def test_an_allow_is_never_kept_past_the_tokens_exp(make_sidecar: MakeSidecar, idp: FakeIdp,
                                                          pki: TestPki) -> None:
    running = await make_sidecar(response={"edge_ttl": 60})
    token = idp.mint("alice", cnf=pki.alice.x5t_s256, lifetime=30)
    exp = idp.tokens[token]["exp"]
    for _ in range(2):
        response = await running.check(token, pki.alice)
        assert response.status == 200 and expires(response) == f"@{exp - 1}"  # over when exp begins


async def test_an_allow_is_never_kept_past_its_own_cache_entry(make_sidecar: MakeSidecar, idp: FakeIdp,
                                                               pki: TestPki) -> None:
    running = await make_sidecar(response={"edge_ttl": 60}, cache={"max_ttl": 10})
    before = time.time()
    response = await running.check(idp.mint("alice", cnf=pki.alice.x5t_s256), pki.alice)
    after = time.time()
    assert math.floor(before + 10) - 1 <= int(expires(response).removeprefix("@")) <= math.floor(after + 10) - 1


async def test_without_an_edge_ttl_every_answer_says_never(sidecar: Running, idp: FakeIdp, pki: TestPki) -> None:
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    for cert in (pki.alice, pki.alice, pki.bob):
        assert expires(await sidecar.check(token, cert)) == "0"


async def test_denials_429_and_503_are_never_kept(make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki) -> None:
    running = await make_sidecar(response=EDGE, admission={"miss_rate": 0.001, "miss_burst": 2})
    # Two new tokens from this address, then 429. Bob's certificate is one no IdP answer vouched for,
    # so admission charges the address (core/admission.py), not a client identity.
    client = {"X-Forwarded-For": "192.0.2.7"}
    denied = await running.check(idp.mint("alice", cnf=pki.alice.x5t_s256), pki.bob, **client)
    idp.fault = Fault(status=500)
    failed = await running.check(idp.mint("alice", cnf=pki.alice.x5t_s256), pki.bob, **client)
    idp.fault = None
    limited = await running.check(idp.mint("alice", cnf=pki.alice.x5t_s256), pki.bob, **client)
    assert (denied.status, failed.status, limited.status) == (401, 503, 429)
    for response in (denied, failed, limited):
        assert expires(response) == "0" and response.headers["Cache-Control"] == "no-store"


async def test_a_stale_answer_is_never_kept(make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki) -> None:
    running = await make_sidecar(response=EDGE, cache={"max_ttl": 1, "stale_if_error": 60})
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    fresh = await running.check(token, pki.alice)
    assert fresh.status == 200 and expires(fresh).startswith("@")
    idp.fault = Fault(status=500)
    await asyncio.sleep(1.2)  # past max_ttl: the IdP is asked, fails, and the stale copy answers
    stale = await running.check(token, pki.alice)
    assert stale.status == 200 and expires(stale) == "0"
    # The copy kept for stale answers is not changed by it: once the IdP answers again, allows may be kept.
    idp.fault = None
    assert expires(await running.check(token, pki.alice)).startswith("@")


async def test_a_dpop_bound_token_is_never_kept(make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki) -> None:
    running = await make_sidecar(response=EDGE, dpop={"enabled": True})
    key = DpopKey("ES256")
    token = idp.mint("alice", token_type="DPoP")
    idp.tokens[token]["cnf"] = {"jkt": key.jkt}
    for _ in range(2):  # a miss, then a cache hit
        proof = key.proof("GET", "https://api.example/orders", token)
        response = await running.client.get("/check", headers={
            "Authorization": f"DPoP {token}", "DPoP": proof, "X-Original-Method": "GET",
            "X-Original-URI": "/orders", "Host": "api.example", "X-Forwarded-Proto": "https"})
        assert response.status == 200, await response.text()
        assert expires(response) == "0"


async def test_an_allow_that_names_forged_headers_is_never_kept(make_sidecar: MakeSidecar, idp: FakeIdp,
                                                                pki: TestPki) -> None:
    running = await make_sidecar(response=EDGE)
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    response = await running.check(token, pki.alice, **{"x-credential-tenant": "forged"})
    assert response.status == 200 and "x-credential-tenant" in response.headers["x-envoy-auth-headers-to-remove"]
    assert expires(response) == "0"
