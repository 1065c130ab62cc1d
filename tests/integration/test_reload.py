"""A reload in process (:meth:`Sidecar.reload`, what SIGHUP runs): the new parts are built beside the
running ones and swapped in between two checks; a check in flight finishes on the parts it began
on; the IdP's cached answers go over when the IdP settings did not change, and a purge reaches them;
what cannot be swapped is refused and leaves the running configuration as it was."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import jwt
import pytest
from prometheus_client import generate_latest

from sidecar import runtime
from sidecar.app import _Reloads, reload
from sidecar.config import ConfigError
from sidecar.dev.fakeidp import FakeIdp, Fault
from sidecar.runtime import RestartRequired
from tests.conftest import MakeSidecar, Running, sidecar_config
from tests.support.dpop_proof import DpopKey
from tests.support.pki_fixtures import TestPki
from tests.support.signing_keys import write_key


async def test_a_reload_applies_a_new_required_scope_from_the_next_check_without_asking_the_idp_again(
        sidecar: Running, idp: FakeIdp, pki: TestPki) -> None:
    token = idp.mint("alice", cnf=pki.alice.x5t_s256, scope="read")
    assert (await sidecar.check(token, pki.alice)).status == 200
    assert idp.introspect_requests == 1
    await sidecar.sidecar.reload(sidecar_config(pki, idp, policy={"required_scopes": ["write"]}))
    denied = await sidecar.check(token, pki.alice)
    assert denied.status == 403 and 'error="insufficient_scope"' in denied.headers["WWW-Authenticate"]
    assert idp.introspect_requests == 1  # the cached answer went over, judged under the new policy
    assert sidecar.sidecar.config.policy.required_scopes == ("write",)


async def test_a_check_waiting_for_the_idp_during_a_reload_finishes_on_the_configuration_it_began_on(
        sidecar: Running, idp: FakeIdp, pki: TestPki) -> None:
    token = idp.mint("alice", cnf=pki.alice.x5t_s256, scope="read")
    idp.fault = Fault(delay=0.5)
    waiting = asyncio.create_task(sidecar.check(token, pki.alice))
    await asyncio.sleep(0.2)  # the check is at the IdP
    assert sidecar.sidecar.in_flight == 1
    await sidecar.sidecar.reload(sidecar_config(pki, idp, policy={"required_scopes": ["write"]}))
    assert sidecar.sidecar.in_flight == 1  # counted on the replaced parts, which drain waits for
    assert (await waiting).status == 200  # the old policy, which it began under
    idp.fault = None
    assert (await sidecar.check(token, pki.alice)).status == 403
    await asyncio.sleep(0.1)
    assert sidecar.sidecar.in_flight == 0


async def test_new_idp_settings_get_a_new_issuer_and_ask_the_idp_afresh(
        sidecar: Running, idp: FakeIdp, pki: TestPki) -> None:
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    assert (await sidecar.check(token, pki.alice)).status == 200
    issuer = sidecar.sidecar.issuer
    await sidecar.sidecar.reload(sidecar_config(pki, idp, idp={"timeout": 2.0}))
    assert sidecar.sidecar.issuer is not issuer
    assert (await sidecar.check(token, pki.alice)).status == 200
    assert idp.introspect_requests == 2  # an answer under other IdP settings is not reused


async def test_a_purge_after_a_reload_also_drops_the_answer_the_new_configuration_could_reuse(
        make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki) -> None:
    secret = "purge-secret-0123456789abcdef"
    running = await make_sidecar(server={"admin_secret": secret})
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    assert (await running.check(token, pki.alice)).status == 200
    await running.sidecar.reload(sidecar_config(pki, idp, server={"admin_secret": secret},
                                             policy={"leeway": 5.0, "required_scopes": ["read"]}))
    idp.tokens.pop(token)  # revoked at the IdP, then purged: the old cache must not answer either
    purged = await running.admin.post("/purge", json={"token": token},
                                      headers={"Authorization": f"Bearer {secret}"})
    assert purged.status == 200
    assert (await running.check(token, pki.alice)).status == 401


async def test_a_reload_that_changes_a_port_is_refused_and_nothing_changes(
        sidecar: Running, idp: FakeIdp, pki: TestPki) -> None:
    before = sidecar.sidecar.parts
    with pytest.raises(RestartRequired) as refused:
        await sidecar.sidecar.reload(sidecar_config(pki, idp, server={"admin_port": 1},
                                                 policy={"required_scopes": ["write"]}))
    assert refused.value.key == "server.admin_port" and "needs a restart" in str(refused.value)
    assert sidecar.sidecar.parts is before


async def test_new_parts_that_do_not_get_ready_are_closed_and_the_running_ones_stay(
        sidecar: Running, idp: FakeIdp, pki: TestPki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "READY_TIMEOUT", 0.5)
    before = sidecar.sidecar.parts
    broken = sidecar_config(pki, idp, idp={"issuer": "https://127.0.0.1:9"})  # discovery never succeeds
    assert not await reload(sidecar.sidecar, lambda: broken)
    assert sidecar.sidecar.parts is before
    text = generate_latest(sidecar.sidecar.metrics.registry).decode()
    assert 'sidecar_config_reloads_total{result="failed"} 1.0' in text
    assert "sidecar_config_last_reload_successful 0.0" in text
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    assert (await sidecar.check(token, pki.alice)).status == 200


async def test_a_reload_whose_file_does_not_load_keeps_the_running_configuration_and_logs_the_key(
        sidecar: Running, captured_logs: pytest.LogCaptureFixture) -> None:
    def loader() -> Any:
        raise ConfigError("policy.binding", "must be one of off, optional, strict; got 'loose'")

    assert not await reload(sidecar.sidecar, loader)
    (record,) = [r for r in captured_logs.records if r.getMessage().startswith("configuration not reloaded")]
    assert record.key == "policy.binding" and record.result == "failed"  # type: ignore[attr-defined]


async def test_the_counters_run_on_across_a_reload(sidecar: Running, idp: FakeIdp, pki: TestPki) -> None:
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    for _ in range(3):
        assert (await sidecar.check(token, pki.alice)).status == 200
    await sidecar.sidecar.reload(sidecar_config(pki, idp, policy={"required_scopes": ["read"]}))
    assert (await sidecar.check(token, pki.alice)).status == 200
    await asyncio.sleep(0)
    text = generate_latest(sidecar.sidecar.metrics.registry).decode()
    assert 'sidecar_decisions_total{outcome="allow",policy="default",reason="ok"} 4.0' in text
    # A miss, two hits, then a miss in the new cache answered from the answer it reused.
    assert 'sidecar_decision_seconds_count{cache="hit",outcome="allow"} 2.0' in text
    assert 'sidecar_decision_seconds_count{cache="miss",outcome="allow"} 2.0' in text


DPOP_URL = "https://api.example:8443/orders"
DPOP_ORIGINAL = {"X-Original-Method": "GET", "X-Original-URI": "/orders", "Host": "api.example:8443",
                 "X-Forwarded-Proto": "https"}


async def dpop_check(running: Running, token: str, proof: str) -> tuple[int, str, Any]:
    answer = await running.client.get("/check", headers={"Authorization": f"DPoP {token}", "DPoP": proof,
                                                         **DPOP_ORIGINAL})
    reason = "" if answer.status == 200 else (await answer.json())["reason"]
    return answer.status, reason, answer.headers


def dpop_token(idp: FakeIdp, key: DpopKey) -> str:
    token = idp.mint("alice", token_type="DPoP")
    idp.tokens[token]["cnf"] = {"jkt": key.jkt}
    return token


async def test_a_dpop_proof_accepted_before_a_reload_is_still_a_replay_after_it(
        make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki) -> None:
    running = await make_sidecar(dpop={"enabled": True})
    key = DpopKey()
    token = dpop_token(idp, key)
    proof = key.proof("GET", DPOP_URL, token)
    assert (await dpop_check(running, token, proof))[:2] == (200, "")
    await running.sidecar.reload(sidecar_config(pki, idp, dpop={"enabled": True, "iat_skew": 10}))
    assert running.sidecar.config.dpop.iat_skew == 10  # the new parts answer
    assert (await dpop_check(running, token, proof))[:2] == (401, "dpop_replayed")
    assert (await dpop_check(running, token, key.proof("GET", DPOP_URL, token)))[:2] == (200, "")


async def test_a_dpop_nonce_issued_before_a_reload_still_counts_after_it(
        make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki) -> None:
    dpop = {"enabled": True, "nonce": "required"}
    running = await make_sidecar(dpop=dpop)
    key = DpopKey()
    token = dpop_token(idp, key)
    status, reason, headers = await dpop_check(running, token, key.proof("GET", DPOP_URL, token))
    assert (status, reason) == (401, "dpop_nonce_missing")
    nonce = headers["DPoP-Nonce"]
    await running.sidecar.reload(sidecar_config(pki, idp, dpop={**dpop, "iat_skew": 10}))
    assert running.sidecar.config.dpop.iat_skew == 10
    assert (await dpop_check(running, token, key.proof("GET", DPOP_URL, token, nonce=nonce)))[:2] == (200, "")


async def published_kids(running: Running) -> list[str]:
    answer = await running.admin.get("/.well-known/jwks.json")
    return [key["kid"] for key in (await answer.json(content_type=None))["keys"]]


async def signing_kid(running: Running, idp: FakeIdp, pki: TestPki) -> str:
    answer = await running.check(idp.mint("alice", cnf=pki.alice.x5t_s256), pki.alice)
    assert answer.status == 200
    return str(jwt.get_unverified_header(answer.headers["x-credential-identity"])["kid"])


@pytest.mark.ops
async def test_a_reload_during_an_identity_key_rotation_neither_signs_with_the_new_key_early_nor_withdraws_the_old(
        make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, tmp_path: Path) -> None:
    key_file = write_key(tmp_path / "identity.pem")
    identity = {"identity": {"key_file": str(key_file), "issuer": "https://sidecar.example", "reload_interval": 0.05},
                "policy": {"identity": True, "identity_audience": "https://orders.internal"}}
    running = await make_sidecar(**identity)
    (old,) = await published_kids(running)
    write_key(key_file)  # the rotation begins: the new key is published, the old one signs for 600 s more
    for _ in range(100):
        if len(await published_kids(running)) == 2:
            break
        await asyncio.sleep(0.05)
    new = (await published_kids(running))[1]
    await running.sidecar.reload(sidecar_config(pki, idp, **identity, cache={"max_ttl": 200}))
    assert running.sidecar.config.cache.max_ttl == 200  # the new parts answer
    assert await published_kids(running) == [old, new]  # verifiers that fetched the set before still verify
    assert await signing_kid(running, idp, pki) == old  # no verifier had to know the new key yet


async def random_token_check(running: Running, source: str) -> int:
    answer = await running.client.get("/", headers={"Authorization": f"Bearer {secrets.token_urlsafe(24)}",
                                                    "X-Forwarded-For": source})
    return int(answer.status)


@pytest.mark.ops
async def test_a_source_over_its_budget_is_still_refused_after_a_reload(
        make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki) -> None:
    admission = {"miss_rate": 0.01, "miss_burst": 2}
    running = await make_sidecar(admission=admission)
    assert [await random_token_check(running, "198.51.100.66") for _ in range(3)] == [401, 401, 429]
    await running.sidecar.reload(sidecar_config(pki, idp, admission=admission, policy={"leeway": 5.0}))
    assert running.sidecar.config.policy.leeway == 5.0
    assert await random_token_check(running, "198.51.100.66") == 429  # a reload is no fresh budget
    assert await random_token_check(running, "198.51.100.7") == 401  # others go on
    assert idp.introspect_requests == 3


@pytest.mark.ops
async def test_a_source_the_idp_told_to_back_off_still_backs_off_after_a_reload(
        make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki) -> None:
    running = await make_sidecar()
    idp.fault = Fault(status=429, headers={"Retry-After": "30"})
    assert await random_token_check(running, "198.51.100.66") == 503
    idp.fault = None
    await running.sidecar.reload(sidecar_config(pki, idp, admission={"miss_rate": 50.0}))
    assert running.sidecar.config.admission.miss_rate == 50.0
    refused = await running.client.get("/", headers={"Authorization": f"Bearer {secrets.token_urlsafe(24)}",
                                                     "X-Forwarded-For": "198.51.100.66"})
    assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 25  # the IdP's 30 s, not forgotten
    assert idp.introspect_requests == 1


@pytest.mark.ops
async def test_a_reload_that_fails_leaves_the_cache_gauges_on_the_running_cache(
        sidecar: Running, idp: FakeIdp, pki: TestPki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "READY_TIMEOUT", 0.3)
    assert (await sidecar.check(idp.mint("alice", cnf=pki.alice.x5t_s256), pki.alice)).status == 200
    broken = sidecar_config(pki, idp, idp={"issuer": "https://127.0.0.1:9"}, cache={"max_entries": 7})
    assert not await reload(sidecar.sidecar, lambda: broken)
    text = generate_latest(sidecar.sidecar.metrics.registry).decode()
    assert f"sidecar_cache_capacity {float(sidecar.sidecar.config.cache.max_entries)}" in text
    assert "sidecar_cache_entries 1.0" in text


def expiry_gauge(running: Running) -> float:
    for line in generate_latest(running.sidecar.metrics.registry).decode().splitlines():
        if line.startswith("sidecar_idp_client_certificate_expiry_timestamp_seconds "):
            return float(line.split()[1])
    raise AssertionError("no expiry gauge")


@pytest.mark.ops
async def test_the_certificate_expiry_gauge_is_the_earliest_of_the_serving_issuers_even_after_a_failed_reload(
        make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    later = pki.ca.issue("sidecar", days=60).write(tmp_path, "partner")
    partner = {"partner": {"issuer": "https://partner.example", "introspection_endpoint": f"{idp.issuer}/introspect",
                           "token_format": "introspection", "client_id": "sidecar",
                           "cert_file": str(later[0]), "key_file": str(later[1]), "ca_file": str(pki.ca_file)}}
    running = await make_sidecar(issuers=partner, policy={"issuers": ["default", "partner"]})
    earliest = pki.sidecar.cert.not_valid_after_utc.timestamp()  # [idp]'s 7 days, not the partner's 60
    assert expiry_gauge(running) == earliest
    monkeypatch.setattr(runtime, "READY_TIMEOUT", 0.3)
    sooner = pki.ca.issue("sidecar", days=1).write(tmp_path, "sooner")
    broken = sidecar_config(pki, idp, idp={"issuer": "https://127.0.0.1:9", "cert_file": str(sooner[0]),
                                           "key_file": str(sooner[1])}, issuers=partner,
                             policy={"issuers": ["default", "partner"]})
    assert not await reload(running.sidecar, lambda: broken)
    assert expiry_gauge(running) == earliest  # the certificate in use, not the one of parts that never served


@pytest.mark.ops
async def test_a_reload_that_stops_sending_identity_tokens_still_publishes_the_keys_that_signed_them(
        make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, tmp_path: Path) -> None:
    key_file = write_key(tmp_path / "identity.pem")
    keys = {"key_file": str(key_file), "issuer": "https://sidecar.example"}
    running = await make_sidecar(identity=keys, policy={"identity": True, "identity_audience": "https://orders"})
    kid = await signing_kid(running, idp, pki)
    await running.sidecar.reload(sidecar_config(pki, idp, identity=keys))  # no policy sends one any more
    answer = await running.admin.get("/.well-known/jwks.json")
    assert answer.status == 200  # tokens signed before the reload are verified until they expire
    assert [k["kid"] for k in (await answer.json(content_type=None))["keys"]] == [kid]


@pytest.mark.ops
async def test_a_reload_that_starts_sending_identity_tokens_publishes_their_keys(
        make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, tmp_path: Path) -> None:
    key_file = write_key(tmp_path / "identity.pem")
    keys = {"key_file": str(key_file), "issuer": "https://sidecar.example"}
    running = await make_sidecar(identity=keys)
    await running.sidecar.reload(sidecar_config(pki, idp, identity=keys,
                                                policy={"identity": True, "identity_audience": "https://orders"}))
    kid = await signing_kid(running, idp, pki)
    assert await published_kids(running) == [kid]  # an upstream can verify what it now receives


@pytest.mark.ops
async def test_a_reload_that_does_not_get_ready_changes_no_limit_of_the_running_configuration(
        make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "READY_TIMEOUT", 0.3)
    identity = {"key_file": str(write_key(tmp_path / "identity.pem")), "issuer": "https://sidecar.example"}
    admission = {"miss_rate": 0.01, "miss_burst": 2}
    running = await make_sidecar(admission=admission, identity=identity)
    assert [await random_token_check(running, "198.51.100.66") for _ in range(3)] == [401, 401, 429]
    jwks_file = tmp_path / "jwks.json"
    broken = sidecar_config(pki, idp, idp={"issuer": "https://127.0.0.1:9"},
                            admission={"miss_rate": 1000.0, "miss_burst": 1000},
                            identity={**identity, "jwks_file": str(jwks_file)})
    assert not await reload(running.sidecar, lambda: broken)
    assert await random_token_check(running, "198.51.100.66") == 429  # the running rate, not the refused one
    assert not jwks_file.exists()  # nor the refused configuration's JWK Set file


async def test_a_sighup_once_shutdown_began_starts_no_reload(
        sidecar: Running, idp: FakeIdp, pki: TestPki, caplog: pytest.LogCaptureFixture) -> None:
    """The parts such a reload would build could swap in after the sidecar closed, never closed."""
    scopes = ["write"]
    reloads = _Reloads(sidecar.sidecar, lambda: sidecar_config(pki, idp, policy={"required_scopes": scopes}))
    reloads.request()  # before shutdown: it runs
    await asyncio.sleep(0.3)
    assert sidecar.sidecar.config.policy.required_scopes == ("write",)
    await reloads.cancel()  # shutdown begins; the handler stays installed until the loop ends
    scopes[:] = ["admin"]
    reloads.request()
    await asyncio.sleep(0.3)
    assert sidecar.sidecar.config.policy.required_scopes == ("write",)
    assert "SIGHUP ignored: shutting down" in caplog.text
