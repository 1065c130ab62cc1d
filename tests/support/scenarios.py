"""One scenario table for every front: the HTTP ext_authz front and the gRPC ext_authz front.

Each :class:`Case` says what the sidecar must decide (status, reason, RFC 6750 error) and the
fronts are driven the way Envoy drives them (tests/support/envoy_side.py), configured from the files in
deploy/envoy/ (sidecar-*.toml sections, envoy-*.yaml filter settings). :func:`through_envoy`
then applies what Envoy does with each answer (ext_authz_http_impl.cc / ext_authz_grpc_impl.cc /
ext_authz.cc), so a case can also state what the client and the upstream end up with.
"""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.dev.fakeidp import FakeIdp, Fault
from sidecar.dev.pki import Issued
from tests.support import envoy_side
from tests.support.envoy_config import ENVOY_DIR, ext_authz_of, load_bootstrap
from tests.support.pki_fixtures import TestPki

FRONTS = ("http", "grpc", "grpc-xfcc")  # grpc-xfcc: no include_peer_certificate (Istio's gRPC provider)
FORGED = {"x-credential-sub": "admin", "x-credential-scope": "admin"}  # sent by the client itself


def deploy_sections(front: str) -> dict[str, dict[str, Any]]:
    """The sidecar TOML of that mode, minus what tests replace (IdP, listen addresses, audiences)."""
    name = "sidecar-http.toml" if front == "http" else "sidecar-grpc.toml"
    raw = tomllib.loads((ENVOY_DIR / name).read_text())
    raw.pop("idp")
    raw.pop("server")
    raw.get("policy", {}).pop("audiences", None)  # the API's identifier: the fake IdP's tokens say "api"
    return raw


@dataclass(frozen=True)
class Case:
    name: str
    token: str  # bound | unbound | read_only | unknown | none | malformed | duplicated | expired | future
    #             | dpop_bound | refresh | mac (see authorization_for)
    cert: str | None = "alice"  # whose certificate Envoy verified: alice | bob | garbage | twice | None
    # (twice: two certificate header fields, bob's then alice's, as from a proxy that appended)
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    fault: Fault | None = None
    status: int = 200
    reason: str | None = None
    error: str | None = None
    scope: str | None = None


CASES = [
    Case("allows a bound token with its certificate and sets every credential header", "bound"),
    Case("denies a bound token presented with another client's certificate", "bound", cert="bob",
         status=401, reason="cnf_mismatch", error="invalid_token"),
    Case("denies a bound token without a certificate under strict binding", "bound", cert=None,
         status=401, reason="cert_missing", error="invalid_token"),
    Case("denies an unbound token under strict binding", "unbound", status=401, reason="token_unbound",
         error="invalid_token"),
    Case("allows an unbound token under optional binding", "unbound", sections={"policy": {"binding": "optional"}}),
    Case("denies a token without a required scope with 403 and the scope in the challenge", "read_only",
         sections={"policy": {"required_scopes": ["write"]}}, status=403, reason="scope_missing",
         error="insufficient_scope", scope="write"),
    Case("denies an unknown token as inactive", "unknown", status=401, reason="token_inactive", error="invalid_token"),
    Case("answers a request without Authorization with a bare Bearer challenge", "none", status=401,
         reason="token_missing"),
    Case("rejects a malformed Authorization header as invalid_request", "malformed", status=400,
         reason="token_malformed", error="invalid_request"),
    Case("rejects two Authorization headers as invalid_request", "duplicated", status=400,
         reason="token_duplicated", error="invalid_request"),
    Case("answers invalid_request with 401 when invalid_request_status says so", "malformed",
         sections={"server": {"invalid_request_status": 401}}, status=401, reason="token_malformed",
         error="invalid_request"),
    Case("denies an unreadable certificate as invalid_token", "bound", cert="garbage", status=401,
         reason="cert_invalid", error="invalid_token"),
    Case("denies two certificate headers as invalid, even beside Envoy's own peer certificate", "bound",
         cert="twice", status=401, reason="cert_invalid", error="invalid_token"),
    Case("denies an expired token", "expired", status=401, reason="token_expired", error="invalid_token"),
    Case("denies a token that is not yet valid", "future", status=401, reason="token_not_yet_valid",
         error="invalid_token"),
    Case("denies a token from an issuer that is not allowed", "bound",
         sections={"policy": {"allowed_issuers": ["https://other.example"]}}, status=401,
         reason="issuer_not_allowed", error="invalid_token"),
    Case("denies a token without a required audience", "bound", sections={"policy": {"audiences": ["billing"]}},
         status=401, reason="audience_mismatch", error="invalid_token"),
    Case("denies a DPoP-bound token under optional binding while dpop.enabled is off", "dpop_bound",
         sections={"policy": {"binding": "optional"}}, status=401, reason="cnf_unsupported",
         error="invalid_token"),
    Case("denies a refresh token presented as an access token", "refresh",
         sections={"policy": {"binding": "optional"}}, status=401, reason="token_not_access", error="invalid_token"),
    Case("denies a token whose token_type is not accepted", "mac", status=401, reason="token_type_not_allowed",
         error="invalid_token"),
    Case("fails closed with 503 when the IdP answers 500", "bound", fault=Fault(status=500), status=503,
         reason="idp_unavailable"),
    Case("fails closed with 503 when the IdP drops the connection", "bound", fault=Fault(drop=True), status=503,
         reason="idp_unavailable"),
]


def _edited(idp: FakeIdp, token: str, **changes: Any) -> str:
    """``token``'s record with ``changes`` applied (a value of None removes the claim)."""
    record = idp.tokens[token]
    for name, value in changes.items():
        if value is None:
            record.pop(name, None)
        else:
            record[name] = value
    return token


def _expired_but_active(idp: FakeIdp, token: str) -> str:
    """An IdP whose clock is behind ours: it still calls the token active, past its exp."""
    idp.fault = Fault(body=json.dumps({**idp.tokens[token], "exp": int(time.time()) - 3600}).encode())
    return token


def authorization_for(case: Case, idp: FakeIdp, pki: TestPki) -> list[str]:
    """The Authorization values of the case (``idp.fault`` set first: a token may replace it)."""
    alice = pki.alice.x5t_s256
    now = int(time.time())
    tokens: dict[str, Callable[[], list[str]]] = {
        "bound": lambda: [f"Bearer {idp.mint('alice', cnf=pki.alice.x5t_s256, scope='read write')}"],
        "unbound": lambda: [f"Bearer {idp.mint('carol')}"],
        "read_only": lambda: [f"Bearer {idp.mint('alice', cnf=pki.alice.x5t_s256, scope='read')}"],
        "unknown": lambda: ["Bearer not-a-real-token"],
        "none": lambda: [],
        "malformed": lambda: ["Bearer a b"],
        "duplicated": lambda: [f"Bearer {idp.mint('alice', cnf=pki.alice.x5t_s256)}", "Bearer other"],
        "expired": lambda: [f"Bearer {_expired_but_active(idp, idp.mint('alice', cnf=alice))}"],
        "future": lambda: [f"Bearer {idp.mint('alice', cnf=alice, nbf=now + 3600)}"],
        "dpop_bound": lambda: [f"Bearer {_edited(idp, idp.mint('alice'), cnf={'jkt': 'A' * 43})}"],
        # oidc-provider introspects a refresh token with no token_type (lib/actions/introspection.js)
        "refresh": lambda: [f"Bearer {_edited(idp, idp.mint('alice'), token_type=None)}"],
        "mac": lambda: [f"Bearer {_edited(idp, idp.mint('alice', cnf=alice), token_type='mac')}"],
    }
    return tokens[case.token]()


def certificate_for(case: Case, pki: TestPki) -> Issued | str | None:
    """The certificate Envoy verified (for ``twice``: alice's, and a second header field is added)."""
    return {"alice": pki.alice, "bob": pki.bob, "garbage": "garbage", "twice": pki.alice, None: None}[case.cert]


def xfcc_for(cert: Issued | str | None, case: Case | None = None, pki: TestPki | None = None) -> list[str]:
    """The XFCC header fields Envoy sends (SANITIZE_SET, cert: true) for the verified certificate."""
    if cert is None:
        return []
    if isinstance(cert, str):
        return [f'Hash={"0" * 64};Cert="{cert}"']
    if case is not None and case.cert == "twice" and pki is not None:
        return [envoy_side.xfcc_element(pki.bob), envoy_side.xfcc_element(cert)]
    return [envoy_side.xfcc_element(cert)]


@dataclass
class Seen:
    """What Envoy makes of one answer: allow (upstream headers) or deny (client response)."""

    allowed: bool
    status: int  # 200 on allow, else what the client receives
    client_headers: dict[str, str]
    body: dict[str, Any] | None
    upstream: dict[str, str]  # the request headers the upstream receives (client's + ours)
    raw_status: int  # the sidecar's own HTTP status (gRPC: denied_response.status)
    rpc_code: int | None = None


def _apply_upstream(original: Mapping[str, str], sets: Mapping[str, str], removed: list[str]) -> dict[str, str]:
    upstream = dict(original)
    upstream.update(sets)  # overwrite (Envoy setCopy / OVERWRITE_IF_EXISTS_OR_ADD)
    for name in removed:
        upstream.pop(name, None)
    return upstream


def http_through_envoy(status: int, headers: Mapping[str, str], body: bytes, original: Mapping[str, str]) -> Seen:
    """ext_authz_http_impl.cc with deploy/envoy/envoy-http.yaml's filter settings."""
    authz = ext_authz_of(load_bootstrap("envoy-http.yaml")).filter
    response = authz.http_service.authorization_response
    prefixes = [p.prefix for p in response.allowed_upstream_headers.patterns if p.prefix]
    exact = {p.exact for p in response.allowed_upstream_headers.patterns if p.exact}
    lower = {k.lower(): v for k, v in headers.items()}
    if status == 200:
        removed = [n.strip() for n in lower.get("x-envoy-auth-headers-to-remove", "").split(",") if n.strip()]
        sets = {k: v for k, v in lower.items() if k in exact or any(k.startswith(p) for p in prefixes)}
        return Seen(True, 200, {}, None, _apply_upstream(original, sets, removed), status)
    if 500 <= status <= 599:  # an error, not a denial: status_on_error, no headers, no body
        return Seen(False, int(authz.status_on_error.code) or 403, {}, None, {}, status)
    allowed = {p.exact for p in response.allowed_client_headers.patterns} | {"www-authenticate", "location"}
    client = {k: v for k, v in lower.items() if k in allowed}
    return Seen(False, status, client, json.loads(body) if body else None, {}, status)


def grpc_through_envoy(response: Any, original: Mapping[str, str]) -> Seen:
    """ext_authz_grpc_impl.cc: OK allows, any other status denies with denied_response."""
    from envoy.config.core.v3 import base_pb2

    code = response.status.code
    if code == 0:
        ok = response.ok_response
        sets = {}
        for option in ok.headers:
            # The proto default (APPEND_IF_EXISTS_OR_ADD) would keep a client-sent copy.
            assert option.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
            assert not option.HasField("append")
            sets[option.header.key] = option.header.value
        return Seen(True, 200, {}, None, _apply_upstream(original, sets, list(ok.headers_to_remove)), 200, code)
    assert not response.HasField("error_response")  # that one would take the status_on_error path
    denied = response.denied_response
    status = int(denied.status.code) or 403
    headers = {o.header.key.lower(): o.header.value for o in denied.headers}
    return Seen(False, status, headers, json.loads(denied.body) if denied.body else None, {}, status, code)
