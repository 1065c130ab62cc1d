"""Bounded stale-if-error over real mTLS: only while the IdP fails, only active and bound tokens,
at most ``cache.stale_if_error`` past the entry's expiry and never past ``exp``; binding and policy
still checked; every such decision labelled ``stale`` in the log and the metrics."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from sidecar.dev.fakeidp import FakeIdp, Fault
from sidecar.support.logs import token_hash
from tests.conftest import MakeSidecar, Running
from tests.integration.test_idp_faults import metric
from tests.support.pki_fixtures import TestPki

STALE = {"max_ttl": 0.2, "stale_if_error": 30}
NO_BREAKER = {"breaker_failures": 0}


async def cached_then_expired(running: Running, idp: FakeIdp, pki: TestPki, token: str,
                              pause: float = 0.25) -> None:
    """Allow once (fills the cache), let the normal entry expire, then break the IdP."""
    assert (await running.check(token, pki.alice)).status == 200
    await asyncio.sleep(pause)
    idp.fault = Fault(status=500)


def stale_records(logs: pytest.LogCaptureFixture) -> list[Any]:
    return [r for r in logs.records if getattr(r, "stale", False) is True]


async def test_off_by_default_an_expired_entry_is_not_used_when_the_idp_fails(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar(cache={"max_ttl": 0.2}, idp=NO_BREAKER)
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    await cached_then_expired(running, idp, pki, token)
    response = await running.check(token, pki.alice)
    assert response.status == 503 and (await response.json())["reason"] == "idp_unavailable"


async def test_while_the_idp_fails_an_active_bound_token_is_allowed_from_cache_and_labelled_stale(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, captured_logs: pytest.LogCaptureFixture
) -> None:
    running = await make_sidecar(cache=STALE, idp=NO_BREAKER)
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    await cached_then_expired(running, idp, pki, token)
    response = await running.check(token, pki.alice)
    assert response.status == 200 and response.headers["x-credential-sub"] == "alice"
    assert idp.introspect_requests == 2  # the IdP was asked first: stale only after it failed
    [record] = stale_records(captured_logs)
    assert record.outcome == "allow" and record.reason == "stale" and record.token == token_hash(token)
    assert await metric(running, "sidecar_decisions_total", outcome="allow", reason="stale") == 1.0
    assert await metric(running, "sidecar_cache_total", result="stale") == 1.0
    idp.fault = None
    assert (await running.check(token, pki.alice)).status == 200
    assert await metric(running, "sidecar_decisions_total", outcome="allow", reason="stale") == 1.0


async def test_a_stale_entry_is_still_checked_against_the_presented_certificate(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, captured_logs: pytest.LogCaptureFixture
) -> None:
    running = await make_sidecar(cache=STALE, idp=NO_BREAKER)
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    await cached_then_expired(running, idp, pki, token)
    response = await running.check(token, pki.bob)
    assert response.status == 401 and (await response.json())["reason"] == "cnf_mismatch"
    [record] = stale_records(captured_logs)
    assert record.outcome == "deny" and record.reason == "cnf_mismatch"


async def test_a_stale_entry_is_still_checked_against_the_policy(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar(cache=STALE, idp=NO_BREAKER, policy={"required_scopes": ["write"]})
    token = idp.mint("alice", cnf=pki.alice.x5t_s256, scope="read")
    assert (await running.check(token, pki.alice)).status == 403
    await asyncio.sleep(0.25)
    idp.fault = Fault(status=500)
    response = await running.check(token, pki.alice)
    assert response.status == 403 and (await response.json())["reason"] == "scope_missing"


async def test_a_stale_entry_is_never_used_past_the_tokens_exp(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar(cache={"max_ttl": 0.1, "stale_if_error": 600}, idp=NO_BREAKER)
    token = idp.mint("alice", cnf=pki.alice.x5t_s256, lifetime=2)  # exp is 1 to 2 seconds away
    exp = idp.tokens[token]["exp"]
    assert (await running.check(token, pki.alice)).status == 200
    idp.fault = Fault(status=500)
    await asyncio.sleep(0.15)
    assert (await running.check(token, pki.alice)).status == 200  # before exp: stale
    await asyncio.sleep(max(exp - time.time(), 0) + 0.05)
    # policy.leeway (5 s) would still accept exp; the stale window never reaches past it
    response = await running.check(token, pki.alice)
    assert response.status == 503 and (await response.json())["reason"] == "idp_unavailable"


async def test_a_stale_entry_is_never_used_past_the_configured_window(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar(cache={"max_ttl": 0.1, "stale_if_error": 0.2}, idp=NO_BREAKER)
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    await cached_then_expired(running, idp, pki, token, pause=0.4)
    assert (await running.check(token, pki.alice)).status == 503


async def test_a_token_the_idp_has_since_called_inactive_is_never_served_stale(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar(cache={**STALE, "negative_ttl": 0.1}, idp=NO_BREAKER)
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    assert (await running.check(token, pki.alice)).status == 200
    await asyncio.sleep(0.25)
    idp.tokens.pop(token)  # revoked
    assert (await running.check(token, pki.alice)).status == 401
    await asyncio.sleep(0.15)
    idp.fault = Fault(status=500)
    assert (await running.check(token, pki.alice)).status == 503


async def test_an_unbound_token_is_never_served_stale(make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki) -> None:
    running = await make_sidecar(cache=STALE, idp=NO_BREAKER, policy={"binding": "optional"})
    token = idp.mint("carol")
    await cached_then_expired(running, idp, pki, token)
    assert (await running.check(token, pki.alice)).status == 503


async def test_while_the_breaker_is_open_a_cached_token_is_served_stale_without_asking_the_idp(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar(cache=STALE, idp={"breaker_failures": 1, "breaker_open": 30})
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    await cached_then_expired(running, idp, pki, token)
    assert (await running.check(idp.mint("alice", cnf=pki.alice.x5t_s256), pki.alice)).status == 503
    calls = idp.introspect_requests
    assert (await running.check(token, pki.alice)).status == 200
    assert idp.introspect_requests == calls
    assert await metric(running, "sidecar_idp_rejections_total", reason="breaker_open") == 1.0
