"""POST /purge on the admin port: by token, by token_hash, or all; Bearer admin secret; never logged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar.config import ConfigError, from_mapping
from sidecar.dev.fakeidp import FakeIdp, Fault
from sidecar.support.logs import token_hash
from tests.conftest import MakeSidecar, Running
from tests.support.pki_fixtures import TestPki

SECRET = "purge-secret-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {SECRET}"}


async def purge(running: Running, body: Any, headers: dict[str, str] | None = None) -> Any:
    return await running.admin.post("/purge", json=body, headers=AUTH if headers is None else headers)


@pytest.fixture
async def running(make_sidecar: MakeSidecar) -> Running:
    return await make_sidecar(server={"admin_secret": SECRET})


async def cached(running: Running, idp: FakeIdp, pki: TestPki) -> str:
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    assert (await running.check(token, pki.alice)).status == 200
    assert (await running.check(token, pki.alice)).status == 200
    return token


async def test_purge_by_token_makes_the_next_check_ask_the_idp_and_see_the_revocation(
    running: Running, idp: FakeIdp, pki: TestPki
) -> None:
    token = await cached(running, idp, pki)
    idp.tokens.pop(token)  # revoked at the IdP; the cache would still allow it
    assert (await running.check(token, pki.alice)).status == 200
    response = await purge(running, {"token": token})
    assert response.status == 200 and await response.json() == {"purged": 1}
    denied = await running.check(token, pki.alice)
    assert denied.status == 401 and (await denied.json())["reason"] == "token_inactive"


async def test_purge_by_the_token_hash_from_the_logs(
    running: Running, idp: FakeIdp, pki: TestPki, captured_logs: pytest.LogCaptureFixture
) -> None:
    token = await cached(running, idp, pki)
    logged = next(r.token for r in captured_logs.records if getattr(r, "outcome", None) == "allow")
    assert logged == token_hash(token)
    response = await purge(running, {"token_hash": logged})
    assert await response.json() == {"purged": 1}
    await running.check(token, pki.alice)
    assert idp.introspect_requests == 2


@pytest.mark.parametrize("body", [{"sub": "alice"}, {"sub": "alice", "iss": "ISSUER"}])
async def test_purge_by_subject_with_or_without_its_issuer_drops_and_refuses_its_tokens(
    running: Running, idp: FakeIdp, pki: TestPki, body: dict[str, str]
) -> None:
    token = await cached(running, idp, pki)
    body = {k: idp.issuer if v == "ISSUER" else v for k, v in body.items()}
    response = await purge(running, body)
    assert response.status == 200 and await response.json() == {"purged": 1}
    denied = await running.check(token, pki.alice)  # the IdP still says active: the revocation refuses it
    assert denied.status == 401 and (await denied.json())["reason"] == "token_inactive"


async def test_purge_all_drops_every_entry(running: Running, idp: FakeIdp, pki: TestPki) -> None:
    tokens = [await cached(running, idp, pki) for _ in range(3)]
    response = await purge(running, {"all": True})
    assert await response.json() == {"purged": 3}
    assert len(running.sidecar.decider.cache) == 0
    await running.check(tokens[0], pki.alice)
    assert idp.introspect_requests == 4


async def test_purge_also_drops_the_stale_copy_so_a_revoked_token_is_not_served_during_an_outage(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar(server={"admin_secret": SECRET}, cache={"stale_if_error": 300},
                                 idp={"breaker_failures": 0})
    token = await cached(running, idp, pki)
    assert await (await purge(running, {"token": token})).json() == {"purged": 1}
    idp.fault = Fault(status=500)
    assert (await running.check(token, pki.alice)).status == 503


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer wrong-secret-0123456789abcdef"},
    {"Authorization": f"Bearer {SECRET}x"},
    {"Authorization": f"Basic {SECRET}"},
    {"Authorization": "Bearer "},
    {},
], ids=["wrong secret", "secret with a suffix", "wrong scheme", "empty", "no Authorization"])
async def test_a_wrong_or_missing_secret_is_401_and_purges_nothing(
    running: Running, idp: FakeIdp, pki: TestPki, headers: dict[str, str],
    captured_logs: pytest.LogCaptureFixture,
) -> None:
    token = await cached(running, idp, pki)
    response = await purge(running, {"all": True}, headers=headers)
    assert response.status == 401 and response.headers["WWW-Authenticate"].startswith('Bearer realm="admin"')
    assert len(running.sidecar.decider.cache) == 1
    await running.check(token, pki.alice)
    assert idp.introspect_requests == 1
    text = "\n".join(repr(r.__dict__) for r in captured_logs.records)
    assert "purge refused" in text and "wrong-secret" not in text


async def test_two_authorization_headers_are_refused(running: Running, idp: FakeIdp, pki: TestPki) -> None:
    await cached(running, idp, pki)
    response = await running.admin.post("/purge", json={"all": True},
                                        headers=[("Authorization", f"Bearer {SECRET}"),
                                                 ("Authorization", f"Bearer {SECRET}")])
    assert response.status == 401 and len(running.sidecar.decider.cache) == 1


@pytest.mark.parametrize("body", [b"not json", b"[]", b"{}", b'{"all": false}', b'{"all": "yes"}',
                                  b'{"token": ""}', b'{"token": 5}', b'{"token_hash": "ABCDEF012345"}',
                                  b'{"token_hash": "abc"}', b'{"token": "a", "all": true}',
                                  b'{"client_id": "a", "iss": "b"}', b'{"iss": "b"}', b"x" * 20_000,
                                  b"[" * 16_000])
async def test_a_malformed_purge_request_is_a_clean_400_and_purges_nothing(
    running: Running, idp: FakeIdp, pki: TestPki, body: bytes
) -> None:
    await cached(running, idp, pki)
    response = await running.admin.post("/purge", data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status == 400 and (await response.json())["error"] == "invalid_request"
    assert len(running.sidecar.decider.cache) == 1


async def test_the_purged_token_never_reaches_a_log_record(
    running: Running, idp: FakeIdp, pki: TestPki, captured_logs: pytest.LogCaptureFixture
) -> None:
    token = await cached(running, idp, pki)
    captured_logs.clear()
    await purge(running, {"token": token})
    text = "\n".join(r.getMessage() + repr(r.__dict__) for r in captured_logs.records)
    assert token_hash(token) in text and token not in text and SECRET not in text


async def test_without_an_admin_secret_there_is_no_purge_endpoint(
    sidecar: Running, idp: FakeIdp, pki: TestPki
) -> None:
    await cached(sidecar, idp, pki)
    response = await purge(sidecar, {"all": True}, headers={"Authorization": "Bearer "})
    assert response.status == 404 and len(sidecar.sidecar.decider.cache) == 1


async def test_the_check_port_has_no_purge_endpoint(running: Running, idp: FakeIdp, pki: TestPki) -> None:
    await cached(running, idp, pki)
    response = await running.client.post("/purge", json={"all": True}, headers=AUTH)
    assert response.status == 401  # a check of the admin secret as a bearer token: unknown token
    assert len(running.sidecar.decider.cache) == 2  # ... which is now cached as inactive; nothing purged


async def test_the_admin_secret_can_come_from_a_file(make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki,
                                                     tmp_path: Path) -> None:
    secret_file = tmp_path / "admin-secret"
    secret_file.write_text(SECRET + "\n")
    running = await make_sidecar(server={"admin_secret_file": str(secret_file)})
    await cached(running, idp, pki)
    assert await (await purge(running, {"all": True})).json() == {"purged": 1}


@pytest.mark.parametrize(("raw", "key"), [
    ({"server": {"admin_secret": "short"}}, "server.admin_secret"),
    ({"server": {"admin_secret_file": "/nonexistent/secret"}}, "server.admin_secret_file"),
    ({"cache": {"stale_if_error": -1}}, "cache.stale_if_error"),
])
def test_invalid_purge_and_stale_settings_name_their_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        from_mapping(raw)
    assert raised.value.key == key


async def test_a_purge_body_that_arrives_in_several_pieces_is_read_whole(
    running: Running, idp: FakeIdp, pki: TestPki
) -> None:
    import asyncio
    import json

    token = await cached(running, idp, pki)
    body = json.dumps({"token": token}).encode()

    async def pieces() -> Any:  # chunked transfer, with pauses so the server sees separate reads
        for i in range(0, len(body), 8):
            yield body[i:i + 8]
            await asyncio.sleep(0.005)

    response = await running.admin.post("/purge", data=pieces(), headers=AUTH)
    assert response.status == 200 and await response.json() == {"purged": 1}
