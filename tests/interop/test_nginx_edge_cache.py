"""The decision cache at the edge in real nginx: deploy/nginx/api-edge-cache.conf.template and its
snippets as shipped, the sidecar on deploy/nginx/sidecar-edge-cache.toml, the real OpenID provider
behind (the fake IdP only where the IdP must fail).

nginx answers from its cache only what the sidecar allowed, for one token, one certificate, one
policy and one target, for as long as the sidecar's ``X-Accel-Expires`` says: a revoked and purged
token passes for at most ``response.edge_ttl``; another certificate, a DPoP proof, a 429 or a 503
never comes from the cache; a cached answer carries its own token's credentials; no token is ever
written in the clear in the cache's files.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar.dev.fakeidp import Fault
from tests.interop.envoy import ThreadedFakeIdp
from tests.interop.nginx import DEPLOY
from tests.interop.oidc_idp import OidcProvider
from tests.interop.stack import Stack, start_stack
from tests.support.dpop_proof import DpopKey
from tests.support.pki_fixtures import TestPki
from tests.support.ports import free_port

pytestmark = [pytest.mark.interop, pytest.mark.fronts]

TEMPLATE = "api-edge-cache.conf.template"
CONFIG = DEPLOY / "sidecar-edge-cache.toml"
# 1 s as shipped; 2 s here, so that an answer lives at least one whole second (nginx keeps an entry
# until the end of the second the sidecar names): long enough for each test to meet it again.
EDGE_TTL = 2
ADMIN_SECRET = "edge-test-admin-secret"
# nginx reads its clock once per turn of its event loop: it may answer from an entry that long past
# the end of the entry's last second (microseconds on an idle machine, milliseconds on a busy one).
NGINX_CLOCK = 0.05


@dataclass
class Edge:
    stack: Stack
    cache_dir: Path
    directory: Path

    def call(self, token: str | None, cert: str | None = "alice") -> int:
        return self.stack.call(token, cert).status

    def purge(self, token: str) -> None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.stack.sidecar.admin_port}/purge", method="POST",
            data=json.dumps({"token": token}).encode(),
            headers={"Authorization": f"Bearer {ADMIN_SECRET}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200

    def decisions(self, outcome: str, **labels: str) -> float:
        return self.stack.sidecar.metric("sidecar_decisions_total", outcome=outcome, **labels)

    def stop(self) -> None:
        self.stack.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_edge(idp: OidcProvider | ThreadedFakeIdp, log_dir: Path, client_files: dict[str, tuple[Path, Path]],
               template: str = TEMPLATE, **overrides: str) -> Edge:
    # World-traversable (nginx's workers run as nobody when the tests run as root); nginx creates
    # the cache directory itself, owned by its workers.
    directory = Path(tempfile.mkdtemp(prefix="sidecar-edge-"))
    directory.chmod(0o755)
    cache_dir = directory / "cache"
    stack = start_stack(
        idp, log_dir, template=template, config=CONFIG, client_files=client_files,
        overrides={"SIDECAR_RESPONSE__EDGE_TTL": str(EDGE_TTL), "SIDECAR_SERVER__ADMIN_SECRET": ADMIN_SECRET,
                   **overrides},
        values={"EDGE_CACHE_DIR": str(cache_dir), "EDGE_CACHE_SECRET": base64.b64encode(os.urandom(32)).decode()})
    return Edge(stack, cache_dir, directory)


@pytest.fixture(scope="module")
def edge(oidc: OidcProvider, client_files: dict[str, tuple[Path, Path]],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    started = start_edge(oidc, tmp_path_factory.mktemp("edge"), client_files,
                         SIDECAR_DPOP__ENABLED="true", SIDECAR_DPOP__MAX_PROOF_SIZE="2048")
    yield started
    started.stop()


def test_the_edge_sidecar_toml_is_the_shipped_one_with_an_edge_ttl_of_one_second() -> None:
    import tomllib

    shipped = tomllib.loads((DEPLOY / "sidecar.toml").read_text())
    edge = tomllib.loads(CONFIG.read_text())
    assert edge == {**shipped, "response": {"edge_ttl": 1}}


def test_a_revoked_and_purged_token_passes_for_at_most_the_edge_ttl_then_is_denied(
    edge: Edge, oidc: OidcProvider, pki: TestPki
) -> None:
    token = oidc.access_token("alice")
    # The sidecar caches the IdP's answer; then the IdP revokes the token: the sidecar still allows
    # it from its own cache, and nginx fills its cache from that allow.
    assert edge.call(token) == 200, edge.stack.diagnostics()
    oidc.revoke(token)
    filled = edge.call(token)
    answered = time.time()  # the sidecar gave the answer nginx keeps before this
    assert filled == 200
    edge.purge(token)  # the sidecar forgets it: any request that reaches it now is asked of the IdP
    allowed_after_purge: list[float] = []
    seen: list[int] = []
    while time.time() < answered + EDGE_TTL + 3:
        sent = time.time()
        status = edge.call(token)
        seen.append(status)
        if status == 200:
            allowed_after_purge.append(sent)
        elif len(seen) > 2 and seen[-3:] == [401, 401, 401]:
            break
        time.sleep(0.05)
    # nginx answered from its cache after the purge (the sidecar denies the token now)...
    assert allowed_after_purge, seen
    # ... never past the edge TTL from the answer it keeps, and then the token is denied for good.
    assert max(allowed_after_purge) < answered + EDGE_TTL + NGINX_CLOCK, (allowed_after_purge, answered)
    assert seen[-3:] == [401, 401, 401] and 200 not in seen[seen.index(401):], seen
    assert edge.decisions("deny", reason="token_inactive") >= 1


def test_a_token_with_another_clients_certificate_is_never_answered_from_the_cache(
    edge: Edge, oidc: OidcProvider
) -> None:
    token = oidc.access_token("alice")
    mismatches = edge.decisions("deny", reason="cnf_mismatch")
    missing = edge.decisions("deny", reason="cert_missing")
    for _ in range(3):
        assert edge.call(token, "alice") == 200, edge.stack.diagnostics()  # cached for alice's certificate
        assert edge.call(token, "bob") == 401  # bob's certificate: the sidecar decides, and denies
        assert edge.call(token, None) == 401  # no certificate at all: the same
    assert edge.decisions("deny", reason="cnf_mismatch") - mismatches == 3
    assert edge.decisions("deny", reason="cert_missing") - missing == 3


def test_a_cached_answer_carries_the_credentials_of_its_own_token(edge: Edge, oidc: OidcProvider,
                                                                   pki: TestPki) -> None:
    # Two tokens of alice's (one certificate) and one of bob's: (client, certificate, scope).
    tokens = {oidc.access_token("alice", scope="read"): ("alice", "read"),
              oidc.access_token("alice", scope="write"): ("alice", "write"),
              oidc.access_token("bob", scope="read write"): ("bob", "read write")}
    first: dict[str, dict[str, str]] = {}
    for round_ in range(3):  # the first round fills the cache, the others are answered from it
        for token, (client, scope) in tokens.items():
            assert edge.call(token, client) == 200, edge.stack.diagnostics()
            credentials = {k.lower(): v for k, v in edge.stack.upstream.last.headers
                           if k.lower().startswith("x-credential-")}
            assert credentials["x-credential-client-id"] == client
            assert credentials["x-credential-cnf-x5t-s256"] == getattr(pki, client).x5t_s256
            assert credentials["x-credential-scope"] == scope
            if round_:
                assert credentials == first[token]
            first[token] = credentials


def test_dpop_requests_are_never_answered_from_the_cache(edge: Edge, oidc: OidcProvider) -> None:
    dave = DpopKey("ES256")
    token = oidc.access_token("dave", dpop=dave)
    url = edge.stack.nginx.url + "/orders/42"
    headers = {"Authorization": f"DPoP {token}"}
    replays = edge.decisions("deny", reason="dpop_replayed")
    for _ in range(3):
        proof = dave.proof("GET", url, token)
        assert edge.stack.call(None, headers={**headers, "DPoP": proof}).status == 200, edge.stack.diagnostics()
        # The same proof again: the sidecar sees it, and refuses the replay (RFC 9449 §11.1).
        assert edge.stack.call(None, headers={**headers, "DPoP": proof}).status == 401
    assert edge.decisions("deny", reason="dpop_replayed") - replays == 3


def test_the_cache_files_never_hold_a_token_in_the_clear(edge: Edge, oidc: OidcProvider) -> None:
    tokens = [oidc.access_token("alice") for _ in range(3)]
    for token in tokens:
        assert edge.call(token) == 200
    files = [path for path in edge.cache_dir.rglob("*") if path.is_file()]
    assert files, "nothing was cached"
    content = b"".join(path.read_bytes() for path in files)
    for token in tokens:
        assert token.encode() not in content
    # Each file's key: the policy (the check location), then the HMAC-SHA256 in base64, nothing else.
    keys = re.findall(rb"\nKEY: ([^\n]*)\n", content)
    assert len(keys) == len(files) and all(re.fullmatch(rb"/_sidecar_check [A-Za-z0-9+/]{43}=", k) for k in keys), keys


def test_a_429_is_never_answered_from_the_cache(oidc: OidcProvider, client_files: dict[str, tuple[Path, Path]],
                                                tmp_path: Path) -> None:
    # One new token per second per client address (nginx says 127.0.0.1), one at a time.
    edge = start_edge(oidc, tmp_path, client_files, SIDECAR_ADMISSION__MISS_RATE="1",
                      SIDECAR_ADMISSION__MISS_BURST="1")
    try:
        first, second = oidc.access_token("alice"), oidc.access_token("alice")
        assert edge.call(first) == 200, edge.stack.diagnostics()
        assert edge.call(second) == 500  # the sidecar's 429: auth_request turns it into 500
        assert edge.decisions("deny", reason="rate_limited") == 1
        time.sleep(1.2)  # the bucket refills; a kept 429 would still be answered (EDGE_TTL 2 s)
        assert edge.call(second) == 200
    finally:
        edge.stop()


def test_a_503_is_never_answered_from_the_cache(pki: TestPki, client_files: dict[str, tuple[Path, Path]],
                                                tmp_path: Path) -> None:
    idp = ThreadedFakeIdp(pki)  # the IdP must fail on demand
    edge = start_edge(idp, tmp_path, client_files, SIDECAR_POLICY__AUDIENCES="api")
    try:
        token = idp.mint("alice")
        idp.idp.fault = Fault(status=500)
        for _ in range(3):
            assert edge.call(token) == 500  # the sidecar's 503: auth_request turns it into 500
        assert edge.decisions("deny", reason="idp_unavailable") == 3  # each one reached the sidecar
        idp.idp.fault = None
        assert edge.call(token) == 200, edge.stack.sidecar.logs()
    finally:
        edge.stop()
        idp.close()


def test_a_server_without_the_keyed_hash_neither_reads_nor_fills_the_cache(
    oidc: OidcProvider, client_files: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    # The hash is set in another server block only: in this one $sidecar_edge_key is empty, and the
    # snippet must not let every request share the one key "/_sidecar_check ".
    template = (DEPLOY / TEMPLATE).read_text()
    hashed = re.search(r"\n    if \(\$sidecar_edge_key = \"\"\) \{\n.*?\n    \}\n", template, re.DOTALL)
    assert hashed is not None
    elsewhere = f"\nserver {{\n    listen 127.0.0.1:{free_port()};\n{hashed.group(0)}}}\n"
    unkeyed = tmp_path / "unkeyed.conf.template"
    unkeyed.write_text(template.replace(hashed.group(0), "\n") + elsewhere)
    edge = start_edge(oidc, tmp_path, client_files, template=str(unkeyed))
    try:
        for client in ("alice", "bob", "alice", "bob"):
            assert edge.call(oidc.access_token(client), client) == 200, edge.stack.diagnostics()
            assert edge.stack.upstream.last.header("x-credential-client-id") == client
        assert not any(path.is_file() for path in edge.cache_dir.rglob("*"))
    finally:
        edge.stop()
