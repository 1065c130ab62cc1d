"""The identity token end to end (docs/identity.md): the real OpenID provider behind the sidecar
process, and an upstream that verifies the token against the sidecar's published JWK Set.

- nginx (deploy/nginx) → an upstream running the PyJWT code of docs/identity.md, read from the doc;
- Envoy (deploy/envoy/envoy-http.yaml) → a second Envoy running
  deploy/envoy/envoy-upstream-identity.yaml (``jwt_authn``) → the upstream.

Each accepts the sidecar's token and refuses one a client forged, an expired one and a wrongly
signed one (sent straight to the upstream, as a request that bypassed the proxy would be); a
client's copy of the header sent through the proxy never arrives. A key rotation under steady
traffic through both refuses no request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from tests.interop.envoy import ENVOY_DIR, ConfiguredSidecar, Envoy, render
from tests.interop.https import Reply, request
from tests.interop.nginx import DEPLOY
from tests.interop.oidc_idp import JWT_RESOURCE, OPAQUE_RESOURCE, OidcProvider
from tests.interop.stack import EchoUpstream, Received, Stack, start_stack
from tests.support.pki_fixtures import TestPki
from tests.support.ports import free_port
from tests.support.signing_keys import pem, write_key

pytestmark = [pytest.mark.interop, pytest.mark.identity]

ROOT = Path(__file__).resolve().parents[2]
HEADER = "x-credential-identity"
# The values docs/identity.md and deploy/envoy/envoy-upstream-identity.yaml name.
ISSUER, AUDIENCE = "https://sidecar.example.com", "https://api.example.com"
# Scaled down from the defaults (60 s, 600 s, 10 s) so that a rotation fits in a test.
TTL, OVERLAP, RELOAD = 5, 5.0, 0.5
# Verifiers fetch the JWK Set again after this, below OVERLAP as docs/identity.md requires (300 s in
# the doc's PyJWT code and in the shipped Envoy file); above TTL / 2, the most a cached identity token
# waits before it is signed again, so a new key that signed at once would be refused.
JWKS_CACHE = 4


def identity_env(key_file: Path, jwks_file: Path) -> dict[str, str]:
    return {"SIDECAR_IDENTITY__KEY_FILE": str(key_file), "SIDECAR_IDENTITY__ISSUER": ISSUER,
            "SIDECAR_IDENTITY__JWKS_FILE": str(jwks_file), "SIDECAR_IDENTITY__TTL": str(TTL),
            "SIDECAR_IDENTITY__ROTATION_OVERLAP": str(OVERLAP), "SIDECAR_IDENTITY__RELOAD_INTERVAL": str(RELOAD),
            "SIDECAR_POLICY__IDENTITY": "true", "SIDECAR_POLICY__IDENTITY_AUDIENCE": AUDIENCE,
            "SIDECAR_POLICY__AUDIENCES": f"{OPAQUE_RESOURCE},{JWT_RESOURCE}"}


def documented_verifier(jwks_url: str) -> Callable[[str], dict[str, Any]]:
    """``identity_of`` exactly as docs/identity.md writes it, pointed at this sidecar's admin port."""
    text = (ROOT / "docs" / "identity.md").read_text()
    block = re.search(r"<!-- verify-identity:begin -->\n```python\n(.*?)```\n<!-- verify-identity:end -->", text, re.S)
    assert block is not None, "docs/identity.md lost its PyJWT example"
    code = block.group(1)
    assert "http://127.0.0.1:8081/.well-known/jwks.json" in code and "lifespan=300" in code
    code = code.replace("http://127.0.0.1:8081/.well-known/jwks.json", jwks_url)
    code = code.replace("lifespan=300", f"lifespan={JWKS_CACHE}")  # scaled down with the overlap
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/identity.md", "exec"), namespace)
    verify: Callable[[str], dict[str, Any]] = namespace["identity_of"]
    return verify


class VerifyingUpstream(EchoUpstream):
    """The protected API with the documented check: 401 unless the identity header verifies."""

    def __init__(self) -> None:
        self.verify: Callable[[str], dict[str, Any]] | None = None  # set once the sidecar's port is known
        self.claims: list[dict[str, Any]] = []
        super().__init__(self._check)

    def _check(self, seen: Received) -> int:
        token = seen.header(HEADER)
        assert self.verify is not None
        try:
            if not token:
                raise jwt.InvalidTokenError("no identity token")
            self.claims.append(self.verify(token))
        except jwt.PyJWTError:
            return 401
        return 200


class UpstreamEnvoy(Envoy):
    """The shipped deploy/envoy/envoy-upstream-identity.yaml in front of ``upstream``."""

    NAME = "envoy-upstream-identity.yaml"

    def __init__(self, *, upstream: int, sidecar_admin: int) -> None:
        self.port, self.admin_port = free_port(), free_port()
        ports = {8001: self.port, 9902: self.admin_port, 8000: upstream, 9192: sidecar_admin}
        document = render(self.NAME, ports, {})
        jwt_authn = document["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
            "http_filters"][0]["typed_config"]
        jwt_authn["providers"]["sidecar"]["remote_jwks"]["cache_duration"] = f"{JWKS_CACHE}s"
        self.write(self.NAME, document)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class EnvoyChain:
    """client → Envoy (ext_authz) → the sidecar; Envoy → Envoy (jwt_authn) → the upstream."""

    sidecar: ConfiguredSidecar
    front: Envoy
    guard: UpstreamEnvoy
    upstream: EchoUpstream
    pki: TestPki
    client_files: dict[str, tuple[Path, Path]]

    def call(self, token: str, cert: str, headers: dict[str, str] | None = None) -> Reply:
        return request(self.front.url + "/orders/42", ca_file=self.pki.ca_file,
                       headers={"Authorization": f"Bearer {token}", **(headers or {})}, cert=self.client_files[cert])

    def diagnostics(self) -> str:
        return f"--- sidecar\n{self.sidecar.logs()}\n--- front\n{self.front.logs()}\n--- guard\n{self.guard.logs()}"

    def stop(self) -> None:
        for part in (self.front, self.guard, self.sidecar):
            part.stop()
        self.upstream.close()


@dataclass
class Deployment:
    key_file: Path
    jwks_file: Path


@pytest.fixture(scope="module")
def nginx_side(oidc: OidcProvider, client_files: dict[str, tuple[Path, Path]],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, VerifyingUpstream, Deployment]]:
    state = tmp_path_factory.mktemp("identity-nginx")
    deployment = Deployment(write_key(state / "identity.key"), state / "jwks.json")
    upstream = VerifyingUpstream()
    stack = start_stack(oidc, state, overrides=identity_env(deployment.key_file, deployment.jwks_file),
                        client_files=client_files, config=DEPLOY / "sidecar.toml", upstream=upstream)
    upstream.verify = documented_verifier(f"http://127.0.0.1:{stack.sidecar.admin_port}/.well-known/jwks.json")
    yield stack, upstream, deployment
    stack.stop()


@pytest.fixture(scope="module")
def envoy_side(oidc: OidcProvider, pki: TestPki, client_files: dict[str, tuple[Path, Path]],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EnvoyChain, Deployment]]:
    state = tmp_path_factory.mktemp("identity-envoy")
    deployment = Deployment(write_key(state / "identity.key"), state / "jwks.json")
    upstream = EchoUpstream()
    sidecar = ConfiguredSidecar(ENVOY_DIR / "sidecar-http.toml", oidc.issuer, pki, state,
                                identity_env(deployment.key_file, deployment.jwks_file), grpc=False)
    guard = UpstreamEnvoy(upstream=upstream.port, sidecar_admin=sidecar.admin_port)
    front = Envoy("envoy-http.yaml", pki, upstream=guard.port, check=sidecar.port, admin=sidecar.admin_port)
    chain = EnvoyChain(sidecar, front, guard, upstream, pki, client_files)
    try:
        sidecar.start()
        guard.start()  # fetches the JWK Set from the sidecar before it listens
        front.start()
    except BaseException:
        chain.stop()
        raise
    yield chain, deployment
    chain.stop()


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def bad_tokens(deployment: Deployment, client: str) -> dict[str, str]:
    """Tokens an attacker who reaches the upstream directly might send, each naming the sidecar's
    current key: made up by the client (HS256 keyed with the public key: algorithm confusion), signed
    by the sidecar's own key but expired, and signed by another key."""
    current = json.loads(deployment.jwks_file.read_text())["keys"][0]
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "client_id": client, "scope": "admin", "iat": now, "exp": now + 60,
              "policy": "default"}
    header = {"alg": "HS256", "kid": current["kid"], "typ": "identity+jwt"}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    mac = hmac.new(current["x"].encode(), signing_input.encode(), hashlib.sha256).digest()
    own = load_pem_private_key(deployment.key_file.read_bytes(), None)
    other = load_pem_private_key(pem(), None)
    headers = {"kid": current["kid"], "typ": "identity+jwt"}
    return {
        "forged by the client": f"{signing_input}.{b64(mac)}",
        "expired": jwt.encode({**claims, "iat": now - 120, "exp": now - 60}, own, algorithm="EdDSA",  # type: ignore[arg-type]
                              headers=headers),
        "wrongly signed": jwt.encode(claims, other, algorithm="EdDSA", headers=headers),  # type: ignore[arg-type]
    }


def test_through_nginx_the_upstream_accepts_the_sidecars_token(
        nginx_side: tuple[Stack, VerifyingUpstream, Deployment], oidc: OidcProvider, pki: TestPki) -> None:
    stack, upstream, _ = nginx_side
    reply = stack.call(oidc.access_token("alice", scope="read write"), "alice")
    assert reply.status == 200, stack.diagnostics()
    claims = upstream.claims[-1]
    assert (claims["client_id"], claims["scope"], claims["policy"]) == ("alice", "read write", "default")
    assert claims["cnf"] == {"x5t#S256": pki.alice.x5t_s256}
    assert claims["exp"] - claims["iat"] == TTL


def test_through_nginx_a_clients_copy_of_the_header_is_replaced_by_the_sidecars(
        nginx_side: tuple[Stack, VerifyingUpstream, Deployment], oidc: OidcProvider) -> None:
    stack, upstream, deployment = nginx_side
    forged = bad_tokens(deployment, "mallory")["forged by the client"]
    reply = stack.call(oidc.access_token("alice", scope="read"), "alice", headers={"X-Credential-Identity": forged})
    assert reply.status == 200, stack.diagnostics()
    assert stack.upstream.last.header(HEADER) != forged and upstream.claims[-1]["client_id"] == "alice"


@pytest.mark.parametrize("kind", ["forged by the client", "expired", "wrongly signed", "missing"])
def test_the_verifying_upstream_refuses_a_token_the_sidecar_did_not_just_sign(
        nginx_side: tuple[Stack, VerifyingUpstream, Deployment], kind: str) -> None:
    _, upstream, deployment = nginx_side
    token = bad_tokens(deployment, "alice").get(kind)
    reply = request(f"http://127.0.0.1:{upstream.port}/orders/42", headers={HEADER: token} if token else {})
    assert reply.status == 401


def test_through_envoy_the_upstream_envoy_accepts_the_sidecars_token_and_not_a_clients_copy(
        envoy_side: tuple[EnvoyChain, Deployment], oidc: OidcProvider, pki: TestPki) -> None:
    chain, deployment = envoy_side
    forged = bad_tokens(deployment, "mallory")["forged by the client"]
    reply = chain.call(oidc.access_token("alice", scope="read write"), "alice", {"X-Credential-Identity": forged})
    assert reply.status == 200, chain.diagnostics()
    token = chain.upstream.last.header(HEADER)
    assert token is not None and token != forged
    _, claims = unverified(token)
    assert claims["client_id"] == "alice" and claims["cnf"] == {"x5t#S256": pki.alice.x5t_s256}


@pytest.mark.parametrize("kind", ["forged by the client", "expired", "wrongly signed", "missing"])
def test_envoys_jwt_authn_refuses_a_token_the_sidecar_did_not_just_sign(
        envoy_side: tuple[EnvoyChain, Deployment], kind: str) -> None:
    chain, deployment = envoy_side
    token = bad_tokens(deployment, "alice").get(kind)
    before = len(chain.upstream.received)
    reply = request(chain.guard.url + "/orders/42", headers={HEADER: token} if token else {})
    assert reply.status == 401, chain.diagnostics()
    assert len(chain.upstream.received) == before  # the upstream never saw it


def test_a_key_rotation_under_traffic_refuses_no_request_through_nginx_or_envoy(
        nginx_side: tuple[Stack, VerifyingUpstream, Deployment], envoy_side: tuple[EnvoyChain, Deployment],
        oidc: OidcProvider) -> None:
    stack, nginx_upstream, nginx_deployment = nginx_side
    chain, envoy_deployment = envoy_side
    # Several tokens, each re-signed on its own schedule: the first signature by a new key comes soon.
    tokens = [oidc.access_token("alice", scope="read") for _ in range(4)]
    before = {name: kids(d) for name, d in (("nginx", nginx_deployment), ("envoy", envoy_deployment))}
    statuses: dict[str, list[int]] = {"nginx": [], "envoy": []}
    stop = threading.Event()

    def pump(name: str, call: Callable[[str], Reply]) -> None:
        sent = 0
        while not stop.is_set():
            statuses[name].append(call(tokens[sent % len(tokens)]).status)
            sent += 1
            time.sleep(0.02)

    threads = [threading.Thread(target=pump, args=("nginx", lambda token: stack.call(token, "alice"))),
               threading.Thread(target=pump, args=("envoy", lambda token: chain.call(token, "alice")))]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        write_key(nginx_deployment.key_file)  # a new Secret version, for both replicas' files
        write_key(envoy_deployment.key_file)
        # Published within RELOAD, signing OVERLAP later, the old key withdrawn OVERLAP after that.
        deadline = time.monotonic() + 2 * OVERLAP + 6 * RELOAD + 5
        while time.monotonic() < deadline and (len(kids(nginx_deployment)) != 1 or len(kids(envoy_deployment)) != 1
                                               or kids(nginx_deployment) == before["nginx"]
                                               or kids(envoy_deployment) == before["envoy"]):
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    for name, seen in statuses.items():
        assert len(seen) > 50 and set(seen) == {200}, (name, sorted(set(seen)), stack.diagnostics(),
                                                       chain.diagnostics())
    for name, deployment, last in (("nginx", nginx_deployment, stack.upstream.last),
                                   ("envoy", envoy_deployment, chain.upstream.last)):
        [new] = kids(deployment)
        assert new not in before[name]
        header, _ = unverified(last.header(HEADER) or "")
        assert header["kid"] == new, name  # the last request carried a token signed by the new key
    assert nginx_upstream.claims[-1]["client_id"] == "alice"


def kids(deployment: Deployment) -> list[str]:
    return [k["kid"] for k in json.loads(deployment.jwks_file.read_text())["keys"]]
