"""A real DPoP client library through real nginx: npm ``oauth4webapi`` 3.8
(tests/interop/oidc/dpop_client.mjs) gets a DPoP-bound token from the real IdP and calls the API
behind the shipped nginx files, building every proof itself.

oauth4webapi signs Ed25519 proofs with the RFC 9864 fully-specified ``alg: "Ed25519"`` (not
``EdDSA``), which the sidecar refused before (``dpop_algorithm_not_allowed``). With
``dpop.nonce = "required"`` the library meets a ``use_dpop_nonce`` 401 carrying ``DPoP-Nonce``
(nginx hands the header on: deploy/nginx/snippets/sidecar-protect.conf), retries with that nonce,
and takes the next nonce from each 200, as RFC 9449 §8.2 and §9 describe.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.interop.conftest import StartStack
from tests.interop.oidc_idp import OIDC_DIR, OPAQUE_RESOURCE, OidcProvider
from tests.interop.stack import Stack

pytestmark = [pytest.mark.interop, pytest.mark.fronts, pytest.mark.dpop]

DPOP = {"SIDECAR_DPOP__ENABLED": "true"}


def run_client(stack: Stack, oidc: OidcProvider, tmp_path: Path, requests: list[tuple[str, str]]) -> dict[str, Any]:
    """dave's application, written with oauth4webapi: one token, then ``requests`` to the API."""
    node = shutil.which("node")
    assert node, "Node.js is required for the interop tests (./test.sh installs it)"
    assert (OIDC_DIR / "node_modules" / "oauth4webapi").is_dir(), "run `npm ci` in tests/interop/oidc"
    config = tmp_path / "client.json"
    config.write_text(json.dumps({
        "issuer": oidc.issuer, "client_id": "dave", "client_secret": oidc.dave_secret, "resource": OPAQUE_RESOURCE,
        "scope": "read", "api": stack.nginx.url, "requests": [{"method": m, "path": p} for m, p in requests]}))
    env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(oidc.pki.ca_file)}
    done = subprocess.run([node, str(OIDC_DIR / "dpop_client.mjs"), str(config)], cwd=OIDC_DIR, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (done.stdout, done.stderr, stack.diagnostics())
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_oauth4webapi_ed25519_proofs_pass_nginx_and_the_sidecar(stacks: StartStack, oidc: OidcProvider,
                                                                tmp_path: Path) -> None:
    stack = stacks(**DPOP)
    allowed = stack.sidecar.metric("sidecar_decisions_total", outcome="allow")
    ran = run_client(stack, oidc, tmp_path, [("GET", "/orders/42"), ("POST", "/orders/42?page=2")])
    assert ran["token_type"] == "DPoP"
    assert [(r["status"], r["retried"]) for r in ran["results"]] == [(200, 0), (200, 0)], \
        (ran, stack.diagnostics())
    assert [r["nonce"] for r in ran["results"]] == [None, None]  # nonces off: none handed out
    seen = stack.upstream.last
    assert (seen.method, seen.path) == ("POST", "/orders/42?page=2")
    assert seen.header("x-credential-cnf-jkt") == ran["jkt"] and seen.header("x-credential-cnf-method") == "dpop"
    assert stack.sidecar.metric("sidecar_decisions_total", outcome="allow") == allowed + 2


def test_oauth4webapi_meets_use_dpop_nonce_retries_with_the_nonce_and_keeps_each_next_one(
        stacks: StartStack, oidc: OidcProvider, tmp_path: Path) -> None:
    stack = stacks(**DPOP, SIDECAR_DPOP__NONCE="required")
    before = stack.sidecar.metric("sidecar_decisions_total", outcome="deny", reason="dpop_nonce_missing")
    ran = run_client(stack, oidc, tmp_path, [("GET", "/orders/1"), ("GET", "/orders/2"), ("DELETE", "/orders/3")])
    results = ran["results"]
    # The first request learns the nonce from the 401 and is retried once; the next ones use the
    # nonce of the previous 200 (nginx: add_header DPoP-Nonce ... always).
    assert [(r["status"], r["retried"]) for r in results] == [(200, 1), (200, 0), (200, 0)], \
        (ran, stack.diagnostics())
    assert all(r["nonce"] for r in results)
    assert stack.sidecar.metric("sidecar_decisions_total", outcome="deny", reason="dpop_nonce_missing") == before + 1
    assert stack.upstream.last.method == "DELETE" and stack.upstream.last.header("dpop-nonce") is None
