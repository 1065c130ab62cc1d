"""The identity token through the sidecar's own fronts (HTTP check port, gRPC ext_authz, the admin
port's JWK Set) against the fake IdP over real mutual TLS: verifiable with the published keys, and
a client's copy of its header never survives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc
from google.rpc import code_pb2

from sidecar.dev.fakeidp import FakeIdp
from sidecar.fronts.grpc import GrpcFront
from tests.conftest import MakeSidecar, Running
from tests.support import envoy_side
from tests.support.pki_fixtures import TestPki
from tests.support.signing_keys import write_key

pytestmark = pytest.mark.identity

HEADER = "x-credential-identity"
AUDIENCE = "https://orders.internal"


def sections(key_file: Path, **response: Any) -> dict[str, Any]:
    return {"identity": {"key_file": str(key_file), "issuer": "https://sidecar.example"},
            "policy": {"identity": True, "identity_audience": AUDIENCE}, "response": response}


async def published(running: Running) -> jwt.PyJWKSet:
    answer = await running.admin.get("/.well-known/jwks.json")
    assert answer.status == 200 and answer.headers["Content-Type"] == "application/jwk-set+json"
    return jwt.PyJWKSet.from_dict(json.loads(await answer.read()))


def verified(token: str, keys: jwt.PyJWKSet) -> dict[str, Any]:
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in keys.keys if k.key_id == kid)
    claims: dict[str, Any] = jwt.decode(token, key, algorithms=["EdDSA"], audience=AUDIENCE,
                                        issuer="https://sidecar.example")
    return claims


async def test_the_check_port_answers_a_token_the_admin_port_keys_verify(
        make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, tmp_path: Path) -> None:
    running = await make_sidecar(**sections(write_key(tmp_path / "k")))
    answer = await running.check(idp.mint("alice", cnf=pki.alice.x5t_s256), pki.alice)
    assert answer.status == 200
    claims = verified(answer.headers[HEADER], await published(running))
    assert claims["client_id"] == "alice" and claims["cnf"] == {"x5t#S256": pki.alice.x5t_s256}


@pytest.mark.parametrize("spelling", ["X-Credential-Identity", "x_credential_identity"])
async def test_a_client_copy_of_the_header_is_replaced_or_removed_never_passed(
        make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, tmp_path: Path, spelling: str) -> None:
    running = await make_sidecar(**sections(write_key(tmp_path / "k")))
    forged = jwt.encode({"sub": "admin", "aud": AUDIENCE}, "a guessed secret of 32 bytes ....", algorithm="HS256")
    answer = await running.check(idp.mint("alice", cnf=pki.alice.x5t_s256), pki.alice, **{spelling: forged})
    assert answer.status == 200
    assert verified(answer.headers[HEADER], await published(running))["sub"] == "alice"  # the proxy overwrites
    removed = answer.headers.get("x-envoy-auth-headers-to-remove", "")
    # The name the answer sets is overwritten by the proxy; any other spelling is named for removal.
    assert (spelling.lower() in removed) == (spelling.lower() != HEADER)


async def test_with_forged_headers_deny_a_client_copy_is_refused(
        make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, tmp_path: Path) -> None:
    running = await make_sidecar(**sections(write_key(tmp_path / "k"), forged_headers="deny"))
    answer = await running.check(idp.mint("alice", cnf=pki.alice.x5t_s256), pki.alice, **{HEADER: "x.y.z"})
    assert answer.status == 400 and (await answer.json())["reason"] == "credential_header_forged"


async def test_the_grpc_front_overwrites_the_header_with_the_signed_token(
        make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, tmp_path: Path) -> None:
    running = await make_sidecar(**sections(write_key(tmp_path / "k")))
    front = GrpcFront(running.sidecar)
    port = await front.start("127.0.0.1", 0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = envoy_side.check_request([f"Bearer {idp.mint('alice', cnf=pki.alice.x5t_s256)}"],
                                               peer_certificate=envoy_side.url_encode_pem(pki.alice.cert_pem),
                                               extra={HEADER: "forged"})
            answer = await pb_grpc.AuthorizationStub(channel).Check(request, timeout=10)
    finally:
        await front.stop(0)
    assert answer.status.code == code_pb2.OK
    [option] = [o for o in answer.ok_response.headers if o.header.key == HEADER]
    assert option.append_action == option.OVERWRITE_IF_EXISTS_OR_ADD
    assert verified(option.header.value, await published(running))["sub"] == "alice"
    assert HEADER not in answer.ok_response.headers_to_remove


async def test_without_identity_there_is_no_jwks_route(sidecar: Running) -> None:
    assert (await sidecar.admin.get("/.well-known/jwks.json")).status == 404
