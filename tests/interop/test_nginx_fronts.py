"""Real nginx running the shipped deploy/nginx templates and snippets, the sidecar running the
shipped deploy/nginx/sidecar.toml, the real OpenID provider behind: what the shipped files
promise about headers and token formats (tests/interop/test_nginx_oidc.py has the decisions).

The sidecar gets only the deployment's values through SIDECAR_* variables (ports, the IdP's
address and files, the API's audiences), each a key the shipped file already has.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import tomllib

import pytest

from tests.interop.conftest import StartStack
from tests.interop.nginx import DEPLOY
from tests.interop.oidc_idp import JWT_RESOURCE, OPAQUE_RESOURCE, OidcProvider
from tests.interop.stack import Stack
from tests.support.pki_fixtures import TestPki

pytestmark = [pytest.mark.interop, pytest.mark.fronts]

# The API's two resource identifiers at the test IdP (opaque and JWT access tokens).
DEPLOYMENT = {"SIDECAR_POLICY__AUDIENCES": f"{OPAQUE_RESOURCE},{JWT_RESOURCE}"}
TEMPLATES = ("api.conf.template", "api-verify-on.conf.template")


def shipped(stacks: StartStack, template: str = "api.conf.template") -> Stack:
    return stacks(template=template, **DEPLOYMENT)


def test_the_deployment_values_replace_keys_the_shipped_sidecar_toml_has() -> None:
    config = tomllib.loads((DEPLOY / "sidecar.toml").read_text())
    for name in DEPLOYMENT:
        section, key = name.removeprefix("SIDECAR_").lower().split("__")
        assert key in config[section], f"{section}.{key} is not in deploy/nginx/sidecar.toml"


@pytest.mark.parametrize("template", TEMPLATES)
def test_no_credential_header_the_client_sends_reaches_the_upstream_whatever_its_name(
    stacks: StartStack, oidc: OidcProvider, template: str
) -> None:
    stack = shipped(stacks, template)
    token = oidc.access_token("alice", scope="read")
    # Names the sidecar does not emit in the shipped config: the snippet's per-name lines cannot
    # cover them; the template's more_clear_input_headers "X-Credential-*" does.
    forged = {"X-Credential-Tenant": "forged", "x-credential-role": "forged", "X-CREDENTIAL-ADMIN": "forged",
              "X-Credential-Sub": "forged", "X-Credential-Scope": "forged",
              # nginx ignores names with underscores (underscores_in_headers off, the default).
              "X_Credential_Sub": "forged", "x_credential_tenant": "forged",
              # nor with dots (ignore_invalid_headers on, the default), which PHP reads as "-".
              "X.Credential.Scope": "forged", "x-credential.tenant": "forged"}
    reply = stack.call(token, "alice", headers=forged)
    assert reply.status == 200, stack.diagnostics()
    seen = stack.upstream.last
    assert [(k, v) for k, v in seen.headers if v == "forged"] == []
    for name in ("tenant", "role", "admin", "sub"):  # sub: the IdP's client-credentials token has none
        assert seen.header(f"x-credential-{name}") is None
    assert seen.header("x-credential-client-id") == "alice" and seen.header("x-credential-scope") == "read"


def test_the_raw_token_does_not_go_upstream_but_every_other_client_header_does(
    stacks: StartStack, oidc: OidcProvider
) -> None:
    stack = shipped(stacks)
    reply = stack.call(oidc.access_token("alice"), "alice", headers={"X-Request-Id": "r-1", "Accept": "text/csv"})
    assert reply.status == 200, stack.diagnostics()
    seen = stack.upstream.last
    assert seen.header("authorization") is None  # the shipped choice (sidecar-protect.conf)
    assert seen.header("x-request-id") == "r-1" and seen.header("accept") == "text/csv"
    assert seen.header("x-credential-client-id") == "alice"


@pytest.mark.parametrize("resource", [OPAQUE_RESOURCE, JWT_RESOURCE])
def test_the_shipped_config_allows_an_opaque_and_a_jwt_access_token_only_with_their_certificate(
    stacks: StartStack, oidc: OidcProvider, pki: TestPki, resource: str
) -> None:
    stack = shipped(stacks)
    token = oidc.access_token("alice", scope="read write", resource=resource)
    introspections = stack.sidecar.metric("sidecar_idp_requests_total", kind="introspection")
    reply = stack.call(token, "alice")
    assert reply.status == 200, stack.diagnostics()
    seen = stack.upstream.last
    assert seen.header("x-credential-aud") == resource
    assert seen.header("x-credential-cnf-x5t-s256") == pki.alice.x5t_s256
    # The JWT is validated locally against the IdP's JWK Set (the IdP would not introspect it).
    asked = stack.sidecar.metric("sidecar_idp_requests_total", kind="introspection") - introspections
    assert asked == (0 if resource == JWT_RESOURCE else 1)
    reached = len(stack.upstream.received)
    assert stack.call(token, "bob").status == 401
    assert stack.call(token).status == 401
    assert len(stack.upstream.received) == reached


def test_a_token_for_another_api_is_denied_by_the_shipped_audience_check(
    stacks: StartStack, oidc: OidcProvider
) -> None:
    stack = stacks(SIDECAR_POLICY__AUDIENCES=JWT_RESOURCE)  # this API accepts JWT_RESOURCE only
    reply = stack.call(oidc.access_token("alice", resource=OPAQUE_RESOURCE), "alice")
    assert reply.status == 401
    assert stack.sidecar.metric("sidecar_decisions_total", outcome="deny", reason="audience_mismatch") == 1


def test_nginx_passes_the_client_address_so_each_client_has_its_own_budget_of_new_tokens(stacks: StartStack) -> None:
    stack = stacks(SIDECAR_ADMISSION__MISS_RATE="0.001", SIDECAR_ADMISSION__MISS_BURST="2", **DEPLOYMENT)
    for index in range(4):  # auth_request turns the sidecar's 429 into 500
        stack.call(secrets.token_urlsafe(24), source="127.0.0.2", headers={"X-Forwarded-For": f"198.51.100.{index}"})
    assert stack.sidecar.metric("sidecar_decisions_total", reason="rate_limited") == 2, stack.diagnostics()
    assert stack.call(secrets.token_urlsafe(24), source="127.0.0.3").status == 401  # another client's budget
    assert stack.sidecar.metric("sidecar_decisions_total", reason="rate_limited") == 2
    assert "sends no source header" not in stack.sidecar.logs()


def test_the_decision_line_of_a_request_through_nginx_names_nginxs_request_id_and_the_original_request(
    stacks: StartStack, oidc: OidcProvider
) -> None:
    stack = shipped(stacks)
    token = oidc.access_token("alice", scope="read")
    reply = stack.call(token, "alice", path="/orders/42?access_token=secret",
                       headers={"X-Request-ID": "forged-by-the-client", "traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"})
    assert reply.status == 200, stack.diagnostics()
    time.sleep(0.2)  # allow lines are written in batches (every 20 ms)
    lines = [json.loads(line) for line in stack.sidecar.log.read_text().splitlines() if line.startswith("{")]
    (line,) = [entry for entry in lines if entry.get("msg") == "allow"][-1:]
    assert re.fullmatch(r"[0-9a-f]{32}", line["request_id"]), line  # nginx's $request_id, not the client's
    assert (line["method"], line["path"], line["client_addr"], line["client_id"]) == (
        "GET", "/orders/42", "127.0.0.1", "alice")  # the path without its query, which can hold a token
    # The host the upstream receives: the snippet sends nginx's $host (never a port).
    assert line["host"] == "127.0.0.1" and line["trace_id"] == "ab" * 16 and line["latency_us"] >= 0
    assert "secret" not in stack.sidecar.log.read_text() and token not in stack.sidecar.log.read_text()
