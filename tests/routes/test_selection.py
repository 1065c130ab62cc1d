"""Choosing the policy per request: the proxy's name from a trusted peer, else the first rule; one
decision path (``decide_now`` / ``decide`` end in the same ``_verdict``) applying it."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from prometheus_client import generate_latest

from sidecar import config as config_module
from sidecar.core.decision import Decider
from sidecar.core.entry import Entry
from sidecar.core.outcome import Deny, Miss
from sidecar.core.request import CheckRequest
from sidecar.core.token_info import TokenInfo, token_info_from_claims
from sidecar.support.metrics import Metrics

pytestmark = pytest.mark.routes
X5T = "A" * 43

CONFIG: dict[str, Any] = {
    "policy": {"required_scopes": ["read"]},
    "policies": {
        "orders_write": {"required_scopes": ["orders:write"]},
        "admin": {"required_scopes": ["admin"], "claims": {"tenant": "tenant"}},
        "health": {"binding": "off"},
    },
    "routes": [
        {"path": "/health", "match": "exact", "policy": "health"},
        {"path": "/orders", "methods": ["POST", "PUT"], "policy": "orders_write"},
        {"path": "/orders", "policy": "default"},
        {"path": "/admin", "policy": "admin"},
        {"path": "/api/*/items/**", "match": "glob", "policy": "orders_write"},
        {"path": "/v[0-9]+/reports", "match": "regex", "hosts": ["reports.example"], "policy": "admin"},
    ],
}


class Verifier:
    def __init__(self, **claims: object) -> None:
        self.claims = {"active": True, "client_id": "alice", "scope": "read", "exp": 4_000_000_000,
                       "token_type": "Bearer", "cnf": {"x5t#S256": X5T}, "tenant": "acme", **claims}
        self.calls = 0

    async def verify(self, token: str, issuers: tuple[str, ...] = ()) -> TokenInfo:
        self.calls += 1
        return token_info_from_claims(json.loads(json.dumps(self.claims)), ("tenant",))


class Reader:
    def thumbprint(self, value: str) -> str:
        return value


def decider(raw: dict[str, Any] | None = None, **claims: object) -> tuple[Decider, Verifier, Metrics]:
    verifier, metrics = Verifier(**claims), Metrics()
    d = Decider(config_module.from_mapping(CONFIG if raw is None else raw), verifier, metrics)
    d.presented._header = Reader()  # type: ignore[assignment]  # the header value is the thumbprint
    return d, verifier, metrics


def req(method: str | None = "GET", path: str | None = "/orders", *, cert: str | None = X5T,
        peer: str = "127.0.0.1", policy: str | None = None, host: str | None = "api.example") -> CheckRequest:
    return CheckRequest(["Bearer tok"], [cert] if cert else [], peer, method=method, path=path, policy=policy,
                        host=host)


async def decide(d: Decider, request: CheckRequest) -> Entry | Deny:
    return await d.decide(request)


def outcome(decision: Entry | Deny | Miss) -> str:
    assert not isinstance(decision, Miss)
    return "allow" if isinstance(decision, Entry) else decision.denial.reason


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("GET", "/orders", "allow"),
    ("GET", "/orders/7?x=1", "allow"),
    ("POST", "/orders", "scope_missing"),
    ("PUT", "/orders/7", "scope_missing"),
    ("GET", "/ordersx", "route_unmatched"),
    ("GET", "/admin/users", "scope_missing"),
    ("GET", "/api/v1/items/a/b", "scope_missing"),
    ("GET", "/api/v1/items", "scope_missing"),
    ("GET", "/api/v1/other", "route_unmatched"),
    ("GET", "/v2/reports", "route_unmatched"),  # the rule needs its host
    ("GET", "/", "route_unmatched"),
    ("get", "/orders", "path_invalid"),
    (None, "/orders", "path_invalid"),
])
async def test_the_first_matching_rule_chooses_the_policy(method: str | None, path: str, expected: str) -> None:
    d, _, _ = decider()
    assert outcome(await decide(d, req(method, path))) == expected
    assert outcome(d.decide_now(req(method, path))) == expected  # the hit: the same verdict


async def test_a_rule_with_hosts_matches_the_host_without_port_and_case() -> None:
    d, _, _ = decider(scope="admin")
    assert outcome(await decide(d, req("GET", "/v2/reports", host="Reports.Example:8443"))) == "allow"
    assert outcome(await decide(d, req("GET", "/v2/reports", host="other.example"))) == "route_unmatched"


@pytest.mark.parametrize("host", ["reports.example.:8443", "reports.example.", "reports.example:",
                                  "reports.example:08443", "reports.example:8443, api.example",
                                  "user@reports.example", "", None])
async def test_where_host_rules_exist_a_host_servers_read_differently_is_refused_not_passed_to_the_next_rule(
        host: str | None) -> None:
    """nginx drops a final dot and an empty port, Envoy, Traefik and HAProxy pass them on; HAProxy's
    req.hdr reads the last element of a list: none of them may fall through to a laxer rule."""
    d, _, _ = decider(scope="admin")
    assert outcome(await decide(d, req("GET", "/v2/reports", host=host))) == "path_invalid"
    assert outcome(await decide(d, req("GET", "/orders", host=host))) == "path_invalid"
    assert outcome(await decide(d, req("GET", "/v2/reports", host="REPORTS.example"))) == "allow"


async def test_a_binding_off_policy_needs_no_certificate_where_the_default_does() -> None:
    d, _, _ = decider()
    assert outcome(await decide(d, req("GET", "/health", cert=None))) == "allow"
    assert outcome(await decide(d, req("GET", "/orders", cert=None))) == "cert_missing"


async def test_the_proxy_names_the_policy_and_an_unknown_name_denies_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    d, _, metrics = decider(scope="admin")
    assert outcome(await decide(d, req(path="/anything", policy="admin"))) == "allow"
    assert outcome(await decide(d, req(path="/admin", policy="health"))) == "allow"  # the proxy's name wins
    with caplog.at_level(logging.INFO):
        denied = await decide(d, req(path="/orders", policy="ordrs"))
    assert isinstance(denied, Deny) and denied.denial.reason == "policy_unknown" and denied.denial.status == 403
    record = next(r for r in caplog.records if getattr(r, "reason", None) == "policy_unknown")
    assert record.levelno == logging.WARNING and "ordrs" in record.detail  # type: ignore[attr-defined]
    text = generate_latest(metrics.registry).decode()
    assert 'sidecar_decisions_total{outcome="deny",policy="none",reason="policy_unknown"} 1.0' in text
    assert "ordrs" not in text  # labels hold configured names only


async def test_a_named_policy_needs_a_path_with_one_meaning_as_a_rule_does() -> None:
    d, _, _ = decider(scope="admin")
    assert outcome(await decide(d, req(path=None, policy="admin"))) == "path_invalid"  # nothing to judge
    for path in ("/admin;x", "/x/..;/admin", "/%252e%252e/admin", "/admin%2fusers", "/adm\u0131n"):
        assert outcome(await decide(d, req(path=path, policy="health"))) == "path_invalid", path
        assert outcome(d.decide_now(req(path=path, policy="health"))) == "path_invalid", path  # memoized


async def test_an_untrusted_peer_cannot_name_a_policy_nor_a_path() -> None:
    d, _, _ = decider(scope="nothing")
    assert outcome(await decide(d, req(path="/health", peer="10.9.9.9", cert=None))) == "route_unmatched"
    assert outcome(await decide(d, req(path=None, policy="health", peer="10.9.9.9", cert=None))) == \
        "route_unmatched"


async def test_without_rules_an_unnamed_request_takes_the_default_and_an_unknown_name_still_denies() -> None:
    d, _, _ = decider({"policy": {"required_scopes": ["read"]}})
    assert outcome(await decide(d, req(path=None))) == "allow"
    assert outcome(await decide(d, req(path=None, policy="admin"))) == "policy_unknown"
    assert outcome(await decide(d, req(path=None, policy="default"))) == "allow"


async def test_the_idp_is_asked_once_per_token_whatever_the_policy_and_each_verdict_is_kept() -> None:
    d, verifier, metrics = decider(scope="read orders:write")
    assert outcome(await decide(d, req("GET", "/orders"))) == "allow"
    assert outcome(await decide(d, req("POST", "/orders"))) == "allow"
    assert outcome(await decide(d, req("GET", "/admin"))) == "scope_missing"
    for _ in range(3):
        assert outcome(d.decide_now(req("POST", "/orders"))) == "allow"
    assert verifier.calls == 1
    entry = d.cache.get(d.cache.key("tok"))
    assert entry is not None and entry.views is not None and len(entry.views) == 2  # orders_write, admin
    text = generate_latest(metrics.registry).decode()
    assert 'sidecar_decisions_total{outcome="allow",policy="orders_write",reason="ok"} 4.0' in text
    assert 'sidecar_decisions_total{outcome="deny",policy="admin",reason="scope_missing"} 1.0' in text


async def test_claim_headers_follow_the_policy_and_every_allow_carries_every_claim_header() -> None:
    d, _, _ = decider(scope="read admin")
    admin = await decide(d, req("GET", "/admin"))
    orders = await decide(d, req("GET", "/orders"))
    assert isinstance(admin, Entry) and isinstance(orders, Entry)
    assert admin.headers["x-credential-tenant"] == "acme"
    assert orders.headers["x-credential-tenant"] == ""  # sent empty: a client copy never passes
    assert admin.headers["x-credential-sub"] == orders.headers["x-credential-sub"]


async def test_a_policy_without_claims_shares_the_default_headers_object() -> None:
    d, _, _ = decider(scope="read orders:write")
    write = await decide(d, req("POST", "/orders"))
    read = await decide(d, req("GET", "/orders"))
    assert isinstance(write, Entry) and isinstance(read, Entry) and write.headers is read.headers


class BrokenRouter:
    def select(self, request: CheckRequest) -> None:
        raise RuntimeError("bug")


async def test_a_bug_while_choosing_the_policy_denies_instead_of_answering_500() -> None:
    d, _, _ = decider(scope="read")
    d.router = BrokenRouter()  # type: ignore[assignment]
    assert outcome(d.decide_now(req())) == "internal_error"


async def test_the_verdicts_kept_per_token_are_bounded_and_past_the_bound_still_right() -> None:
    from sidecar.core.policies import MAX_VIEWS

    names = [f"p{i}" for i in range(MAX_VIEWS + 4)]
    raw = {"policies": {n: {"required_scopes": ["read"] if i % 2 else ["admin"]} for i, n in enumerate(names)}}
    d, verifier, _ = decider(raw)
    for i, name in enumerate(names * 2):
        expected = "allow" if names.index(name) % 2 else "scope_missing"
        assert outcome(await decide(d, req(policy=name))) == expected, i
    entry = d.cache.get(d.cache.key("tok"))
    assert entry is not None and entry.views is not None and len(entry.views) == MAX_VIEWS
    assert verifier.calls == 1
