"""Pushed revocation end to end (docs/events.md): a fleet of three sidecars on a real Redis in front
of the real OpenID provider (oidc-provider), and a transmitter in the test that signs Security
Event Tokens with the provider's own signing key (the one its discovery's ``jwks_uri`` publishes).

A ``session-revoked`` event for a subject, and a ``token-revoked`` event, pushed to one replica
(RFC 8935): within one second every replica denies what they name, though the provider still
vouches for the JWT access tokens (validated locally). Forged, replayed, wrongly addressed and
stale SETs are refused with the RFC 8935 error and purge nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from sidecar import config as config_module
from sidecar.app import admin_app
from sidecar.dev.redis import RedisServer
from sidecar.runtime import Sidecar
from tests.conftest import Running
from tests.fleet.conftest import wait_subscribed
from tests.interop.oidc_idp import JWT_RESOURCE, OPAQUE_RESOURCE, OidcProvider
from tests.support.check_server import CheckTestServer
from tests.support.pki_fixtures import TestPki
from tests.support.ports import free_port
from tests.support.security_events import CONTENT_TYPE, session_revoked, signed_set, token_revoked

pytestmark = [pytest.mark.interop, pytest.mark.fleet, pytest.mark.identity]

AUDIENCE = "https://sidecar.example/security-events"
ADMIN_SECRET = "events-admin-secret-0123456789"
REPLICAS = 3


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), free_port()).start()
    yield server
    server.kill()


def idp_signing_key(oidc: OidcProvider) -> tuple[Any, str]:
    """The provider's own ES256 signing key (its state directory keeps the private JWK Set) and kid."""
    jwks = json.loads((oidc.state_dir / "jwks.json").read_text())
    jwk = next(k for k in jwks["keys"] if k["kty"] == "EC")
    return ECAlgorithm.from_jwk(json.dumps(jwk)), jwk["kid"]


class Fleet:
    def __init__(self, replicas: list[Running], oidc: OidcProvider, pki: TestPki) -> None:
        self.replicas, self.oidc, self.pki = replicas, oidc, pki
        self.key, self.kid = idp_signing_key(oidc)

    def set(self, events: dict[str, Any], **overrides: Any) -> str:
        fields: dict[str, Any] = {"iss": self.oidc.issuer, "aud": AUDIENCE, "events": events}
        key, alg, kid = overrides.pop("key", self.key), overrides.pop("alg", "ES256"), overrides.pop("kid", self.kid)
        return signed_set(key, alg, kid, **{**fields, **overrides})

    async def push(self, compact: str, replica: int = 0) -> tuple[int, Any]:
        answer = await self.replicas[replica].admin.post("/security-events", data=compact.encode(),
                                                         headers={"Content-Type": CONTENT_TYPE})
        body = await answer.read()
        return answer.status, (json.loads(body) if body else None)

    async def statuses(self, token: str, cert: str = "alice") -> list[int]:
        issued = getattr(self.pki, cert)
        return [(await r.check(token, issued)).status for r in self.replicas]

    async def denied_everywhere_within(self, tokens: list[tuple[str, str]], seconds: float) -> float:
        """Seconds until every replica denies each (token, certificate); fails past ``seconds``."""
        started = time.monotonic()
        while True:
            seen = [await self.statuses(token, cert) for token, cert in tokens]
            if all(set(statuses) == {401} for statuses in seen):
                return time.monotonic() - started
            assert time.monotonic() - started < seconds, seen
            await asyncio.sleep(0.02)


StartFleet = Callable[[], Awaitable[Fleet]]


@pytest.fixture
async def fleet(oidc: OidcProvider, pki: TestPki, redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Fleet]:
    files = []
    for name in ("secret", "seal"):
        (path := tmp_path / name).write_text(secrets.token_urlsafe(32))
        files.append(str(path))
    redis_server.cli("FLUSHALL")
    config = config_module.from_mapping({
        "server": {"admin_secret": ADMIN_SECRET},
        "idp": {"issuer": oidc.issuer, "client_id": "sidecar", "cert_file": str(pki.sidecar_files[0]),
                "key_file": str(pki.sidecar_files[1]), "ca_file": str(pki.ca_file)},
        "policy": {"audiences": [OPAQUE_RESOURCE, JWT_RESOURCE]},
        "fleet": {"enabled": True, "url": redis_server.url, "secret_file": files[0], "seal_key_file": files[1],
                  "timeout": 0.2},
        "events": {"enabled": True, "audience": AUDIENCE},
    })
    async with contextlib.AsyncExitStack() as stack:
        replicas = []
        for _ in range(REPLICAS):
            sidecar = await stack.enter_async_context(Sidecar.running(config))
            check = await stack.enter_async_context(TestClient(CheckTestServer(sidecar)))
            admin = await stack.enter_async_context(TestClient(TestServer(admin_app(sidecar))))
            running = Running(sidecar, check, admin)
            await wait_subscribed(running)
            replicas.append(running)
        yield Fleet(replicas, oidc, pki)


def subject_of(token: str) -> str:
    sub: str = jwt.decode(token, options={"verify_signature": False})["sub"]
    return sub


async def test_a_session_revoked_event_makes_every_replica_deny_the_subjects_tokens_within_a_second(
        fleet: Fleet, oidc: OidcProvider) -> None:
    alice = [oidc.access_token("alice", scope="read", resource=JWT_RESOURCE) for _ in range(2)]
    bob = oidc.access_token("bob", scope="read", resource=JWT_RESOURCE)
    for token in alice:
        assert await fleet.statuses(token) == [200] * REPLICAS  # cached on every replica
    assert await fleet.statuses(bob, "bob") == [200] * REPLICAS
    subject = {"format": "iss_sub", "iss": oidc.issuer, "sub": subject_of(alice[0])}
    assert await fleet.push(fleet.set(session_revoked(subject)), replica=1) == (202, None)
    took = await fleet.denied_everywhere_within([(t, "alice") for t in alice], 1.0)
    assert took < 1.0
    assert await fleet.statuses(bob, "bob") == [200] * REPLICAS  # another subject: untouched
    await asyncio.sleep(1.1)  # a token issued after the event (iat has whole seconds) is the subject's again
    assert await fleet.statuses(oidc.access_token("alice", scope="read", resource=JWT_RESOURCE)) == [200] * REPLICAS


async def test_a_token_revoked_event_makes_every_replica_deny_that_token_within_a_second(
        fleet: Fleet, oidc: OidcProvider) -> None:
    by_jti = oidc.access_token("alice", scope="read", resource=JWT_RESOURCE)  # valid for the IdP still
    opaque = oidc.access_token("bob", scope="read")
    other = oidc.access_token("alice", scope="read", resource=JWT_RESOURCE)
    for token, cert in ((by_jti, "alice"), (opaque, "bob"), (other, "alice")):
        assert await fleet.statuses(token, cert) == [200] * REPLICAS
    jti = jwt.decode(by_jti, options={"verify_signature": False})["jti"]
    oidc.revoke(opaque, "bob")  # the IdP revoked it; the replicas' caches still say active
    assert await fleet.statuses(opaque, "bob") == [200] * REPLICAS
    assert (await fleet.push(fleet.set(token_revoked(jti=jti))))[0] == 202
    assert (await fleet.push(fleet.set(token_revoked(token=opaque)), replica=2))[0] == 202
    took = await fleet.denied_everywhere_within([(by_jti, "alice"), (opaque, "bob")], 1.0)
    assert took < 1.0
    assert await fleet.statuses(other, "alice") == [200] * REPLICAS


def refusals(fleet: Fleet, subject: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """(SET, the RFC 8935 error) for a SET that must purge nothing."""
    forger = ec.generate_private_key(ec.SECP256R1())
    return {
        "forged (another key under the IdP's kid)": (fleet.set(session_revoked(subject), key=forger),
                                                    "authentication_failed"),
        "from another issuer": (fleet.set(session_revoked(subject), iss="https://evil.example"), "invalid_issuer"),
        "wrongly addressed": (fleet.set(session_revoked(subject), aud="https://another.example/events"),
                              "invalid_audience"),
        "stale": (fleet.set(session_revoked(subject), iat=time.time() - 3600), "invalid_request"),
        "signed with a key the IdP does not publish": (fleet.set(session_revoked(subject), key=forger, kid="k0"),
                                                       "invalid_key"),
    }


async def test_forged_wrongly_addressed_and_stale_sets_are_refused_and_purge_nothing(
        fleet: Fleet, oidc: OidcProvider) -> None:
    token = oidc.access_token("alice", scope="read", resource=JWT_RESOURCE)
    assert await fleet.statuses(token) == [200] * REPLICAS
    subject = {"format": "iss_sub", "iss": oidc.issuer, "sub": subject_of(token)}
    for case, (compact, err) in refusals(fleet, subject).items():
        status, body = await fleet.push(compact)
        assert (status, body["err"]) == (400, err), case
    await asyncio.sleep(0.3)  # what a purge would take to reach every replica
    hits = [r.sidecar.metrics.registry.get_sample_value("sidecar_cache_total", {"result": "hit"}) or 0
            for r in fleet.replicas]
    assert await fleet.statuses(token) == [200] * REPLICAS
    assert [r.sidecar.metrics.registry.get_sample_value("sidecar_cache_total", {"result": "hit"}) or 0
            for r in fleet.replicas] > hits  # still answered from each cache


async def test_a_replayed_set_is_refused_on_any_replica_and_purges_nothing_again(
        fleet: Fleet, oidc: OidcProvider) -> None:
    first = oidc.access_token("alice", scope="read", resource=JWT_RESOURCE)
    compact = fleet.set(token_revoked(jti=jwt.decode(first, options={"verify_signature": False})["jti"]))
    assert (await fleet.push(compact, replica=0))[0] == 202
    for replica in range(REPLICAS):
        status, body = await fleet.push(compact, replica=replica)
        assert (status, body["err"]) == (400, "invalid_request"), replica
        assert "already" in body["description"]


async def test_an_event_without_the_secevent_content_type_is_refused(fleet: Fleet) -> None:
    answer = await fleet.replicas[0].admin.post("/security-events", data=b"x.y.z",
                                                headers={"Content-Type": "application/json"})
    assert answer.status == 400 and (await answer.json())["err"] == "invalid_request"


async def test_an_operator_purge_by_client_id_denies_that_clients_tokens_on_every_replica(
        fleet: Fleet, oidc: OidcProvider) -> None:
    alice = oidc.access_token("alice", scope="read", resource=JWT_RESOURCE)
    bob = oidc.access_token("bob", scope="read", resource=JWT_RESOURCE)
    assert await fleet.statuses(alice) == [200] * REPLICAS and await fleet.statuses(bob, "bob") == [200] * REPLICAS
    answer = await fleet.replicas[2].admin.post("/purge", json={"client_id": "alice"},
                                                headers={"Authorization": f"Bearer {ADMIN_SECRET}"})
    assert answer.status == 200 and await answer.json() == {"purged": 1, "fleet": True}
    await fleet.denied_everywhere_within([(alice, "alice")], 1.0)
    assert await fleet.statuses(bob, "bob") == [200] * REPLICAS
