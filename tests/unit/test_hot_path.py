"""The cache-hit fast path: same answers, counts and log lines as the full decision, cheaper."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time

import pytest
from multidict import CIMultiDict, istr
from prometheus_client import generate_latest

from sidecar import config as config_module
from sidecar.core import decision_log
from sidecar.core.decision import Decider
from sidecar.core.decision_log import DecisionLog
from sidecar.core.entry import Entry
from sidecar.core.extract import TrustedProxies
from sidecar.core.headers import HeaderBuilder
from sidecar.core.interning import Interner
from sidecar.core.outcome import Deny, Miss
from sidecar.core.policy import Policy
from sidecar.core.request import CheckRequest
from sidecar.core.token_info import TokenInfo, token_info_from_claims
from sidecar.support import logs
from sidecar.support.metrics import Metrics
from sidecar.support.ttl_cache import TtlStore

X5T = "A" * 43


class Verifier:
    def __init__(self, **claims: object) -> None:
        self.claims = {"active": True, "client_id": "alice", "scope": "read", "exp": 4_000_000_000,
                       "token_type": "Bearer", "cnf": {"x5t#S256": X5T}, **claims}
        self.calls = 0

    async def verify(self, token: str, issuers: tuple[str, ...] = ()) -> TokenInfo:
        self.calls += 1
        return token_info_from_claims(json.loads(json.dumps(self.claims)))


class Reader:
    """Stands in for the certificate reader: the header value is the thumbprint itself."""

    def thumbprint(self, value: str) -> str:
        return value


def decider(**policy: object) -> tuple[Decider, Verifier, Metrics]:
    verifier, metrics = Verifier(), Metrics()
    config = config_module.from_mapping({"policy": policy})
    d = Decider(config, verifier, metrics)
    d.presented._header = Reader()  # type: ignore[assignment]  # the header value is the thumbprint
    return d, verifier, metrics


def req(authorization: list[str], cert: str | None = X5T) -> CheckRequest:
    return CheckRequest(authorization, [cert] if cert else [], "127.0.0.1")


async def test_a_cached_token_is_answered_now_without_awaiting_by_the_same_checks() -> None:
    d, verifier, _ = decider()
    auth = ["Bearer tok"]
    assert isinstance(d.decide_now(req(auth)), Miss)  # not cached yet: only the miss awaits
    assert isinstance(await d.decide(req(auth)), Entry)
    hit = d.decide_now(req(auth))
    assert isinstance(hit, Entry) and hit.headers["x-credential-client-id"] == "alice"
    empty = d.decide_now(CheckRequest(auth, [" "], "127.0.0.1"))  # an empty header is no certificate
    assert isinstance(empty, Deny) and empty.denial.reason == "cert_missing"
    reasons = {
        "cnf_mismatch": req(auth, "B" * 43),
        "cert_missing": req(auth, None),
        "cert_invalid": CheckRequest(auth, [X5T, X5T], "127.0.0.1"),  # two certificate headers
        "token_duplicated": req(["Bearer tok", "Bearer tok"]),
        "token_missing": req(["Basic abc"]),
    }
    for reason, request in reasons.items():
        decided = d.decide_now(request)
        assert isinstance(decided, Deny) and decided.denial.reason == reason
    assert verifier.calls == 1


async def test_a_certificate_from_an_untrusted_peer_is_not_presented() -> None:
    d, _, _ = decider()
    await d.decide(req(["Bearer tok"]))
    decided = d.decide_now(CheckRequest(["Bearer tok"], [X5T], "192.0.2.7"))
    assert isinstance(decided, Deny) and decided.denial.reason == "cert_missing"


async def test_hits_are_counted_like_misses_when_the_registry_is_read() -> None:
    d, _, metrics = decider()
    await d.decide(req(["Bearer tok"]))
    for _ in range(3):
        assert isinstance(d.decide_now(req(["Bearer tok"])), Entry)
    text = generate_latest(metrics.registry).decode()
    assert 'sidecar_decisions_total{outcome="allow",policy="default",reason="ok"} 4.0' in text
    assert 'sidecar_cache_total{result="hit"} 3.0' in text
    assert 'sidecar_cache_total{result="miss"} 1.0' in text


async def test_a_scope_denied_cached_token_is_denied_now_and_an_expired_one_is_never_cached() -> None:
    d, _, _ = decider(required_scopes=["write"])
    await d.decide(req(["Bearer tok"]))
    decided = d.decide_now(req(["Bearer tok"]))
    assert isinstance(decided, Deny) and decided.denial.reason == "scope_missing"
    d2, verifier2, _ = decider()  # exp in the past (beyond the leeway)
    verifier2.claims["exp"] = 1
    denied = await d2.decide(req(["Bearer old"]))
    assert isinstance(denied, Deny) and denied.denial.reason == "token_expired"
    assert isinstance(d2.decide_now(req(["Bearer old"])), Miss)


async def test_the_fast_allow_line_is_the_line_the_json_formatter_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    monkeypatch.setattr(logs, "HANDLER", handler)
    monkeypatch.setattr(decision_log, "FLUSH_AFTER", 0.0)
    monkeypatch.setattr(logging.root, "handlers", [handler])
    level = logging.root.level
    logging.root.setLevel(logging.INFO)  # setLevel, not an attribute: it clears the loggers' caches
    try:
        await _write_fast_and_slow(stream)
    finally:
        logging.root.setLevel(level)


def _entry(client_id: str | None) -> Entry:
    info = TokenInfo(active=True, client_id=client_id)
    return Entry(info=info, headers=HeaderBuilder(config_module.ResponseConfig()).build(info), denial=None,
                 scope_denial=None, token_hash="0123456789ab")


LOOPBACK = TrustedProxies(["127.0.0.1/32"])


async def _write_fast_and_slow(stream: io.StringIO) -> None:
    logger = logging.getLogger("sidecar.decision")
    decision_log = DecisionLog(logger, LOOPBACK)
    named, default = Policy(config_module.PolicyConfig(), "orders_read", 1), Policy(config_module.PolicyConfig())
    headers = CIMultiDict({"X-Request-ID": "req-1", "traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"})
    described = CheckRequest([], [], "127.0.0.1", method="GET", host='h\u00e9"st', path="/orders/1?access_token=x",
                             forwarded="10.0.0.1, 192.0.2.9", headers=headers)
    bare = CheckRequest([], [], "192.0.2.7", method="GET", path="/a", headers=headers)  # not a trusted proxy
    now = time.time()
    decision_log.allow(now, _entry('cli"ent'), "hit", named, described)
    decision_log.allow(now, _entry(None), "miss", default, bare)
    assert stream.getvalue() == ""  # batched until the loop runs the flush
    await asyncio.sleep(0.05)
    logger.info("allow", extra={"outcome": "allow", "reason": "ok", "token": "0123456789ab", "cache": "hit",
                                "client_id": 'cli"ent', "policy": "orders_read",
                                **decision_log.request_fields(described, now)})
    fast1, fast2, slow = stream.getvalue().splitlines()
    strip_ts = re.compile(r'^\{"ts":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z",')
    assert strip_ts.match(fast1) and strip_ts.match(slow)
    assert strip_ts.sub("", fast1) == strip_ts.sub("", slow)
    line = json.loads(fast1)
    assert (line["request_id"], line["method"], line["host"], line["path"], line["client_addr"], line["trace_id"]) \
        == ("req-1", "GET", 'h\u00e9"st', "/orders/1", "192.0.2.9", "ab" * 16)  # never the query: it may hold a token
    assert line["latency_us"] >= 0
    untrusted = json.loads(fast2)
    assert untrusted["client_id"] is None and untrusted["policy"] == "default" and untrusted["cache"] == "miss"
    # From a peer that is no trusted proxy: nothing it says about the request, its id or its trace.
    assert (untrusted["method"], untrusted["path"], untrusted["client_addr"]) == (None, None, "192.0.2.7")
    assert "trace_id" not in untrusted and untrusted["request_id"] != "req-1"


def test_the_fast_allow_line_goes_through_logging_when_other_handlers_listen(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    DecisionLog(logging.getLogger("sidecar.decision"), LOOPBACK).allow(
        time.time(), _entry("alice"), "hit", Policy(config_module.PolicyConfig()),
        CheckRequest([], [], "127.0.0.1"))
    record = caplog.records[-1]
    assert record.getMessage() == "allow" and record.token == "0123456789ab"  # type: ignore[attr-defined]
    assert record.request_id and record.client_addr == "127.0.0.1"  # type: ignore[attr-defined]


def test_allow_lines_are_sampled_evenly_by_the_configured_ratio(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    decision_log = DecisionLog(logging.getLogger("sidecar.decision"), LOOPBACK, sample_ratio=0.25)
    for _ in range(100):
        decision_log.allow(time.time(), _entry("alice"), "hit", Policy(config_module.PolicyConfig()),
                           CheckRequest([], [], "127.0.0.1"))
    decision_log.allow(time.time(), _entry("alice"), "hit", Policy(config_module.PolicyConfig()),
                       CheckRequest([], [], "127.0.0.1"), trace_id="ab" * 16)  # a traced check: always
    assert len([r for r in caplog.records if r.getMessage() == "allow"]) == 26


def test_the_store_expires_each_entry_at_its_deadline_and_drops_the_oldest_when_full() -> None:
    now = [0.0]
    store: TtlStore[str, float] = TtlStore(2, lambda v: v, lambda: now[0])
    store["a"], store["b"] = 10.0, 20.0
    store["c"] = 30.0
    assert store.get("a") is None and store.get("b") == 20.0 and len(store) == 2
    now[0] = 20.0
    assert store.get("b") is None and store.get("c") == 30.0
    assert store.pop("c") == 30.0 and len(store) == 0


def test_equal_claim_values_of_different_tokens_are_shared() -> None:
    interner = Interner()
    a = interner.info(token_info_from_claims(json.loads('{"active":true,"scope":"read write","iss":"https://i"}')))
    b = interner.info(token_info_from_claims(json.loads('{"active":true,"scope":"read write","iss":"https://i"}')))
    assert a == b and a.scopes is b.scopes and a.scope is b.scope and a.iss is b.iss


def test_credential_header_pairs_name_each_header_exactly_as_configured() -> None:
    builder = HeaderBuilder(config_module.ResponseConfig(prefix="X-Auth-", claims={"tenant": "Tenant-Id"}))
    headers = builder.build(TokenInfo(active=True, sub="alice"))
    names = [name for name, _ in headers.pairs()]
    assert names == list(builder.names) == list(headers)
    assert all(isinstance(name, istr) and str(name) == plain for name, plain in zip(names, builder.names, strict=True))
    assert CIMultiDict(headers.pairs())["x-auth-sub"] == "alice"


def test_credential_headers_read_like_a_dict() -> None:
    builder = HeaderBuilder(config_module.ResponseConfig(claims={"tenant": "tenant"}))
    headers = builder.build(TokenInfo(active=True, sub="alice", aud=("a", "b")))
    assert dict(headers) == dict(headers.pairs()) and len(headers) == 12
    assert headers["x-credential-aud"] == "a b" and headers.get("x-nope") is None
    assert headers == {name: headers[name] for name in builder.names}


async def test_every_decision_is_timed_by_outcome_and_cache_result() -> None:
    d, _, metrics = decider(required_scopes=["read"])
    await d.decide(req(["Bearer tok"]))
    for _ in range(3):
        d.decide_now(req(["Bearer tok"]))
    d.decide_now(req(["Bearer tok"], "B" * 43))  # cnf_mismatch, from the cache
    d.decide_now(req([]))  # token_missing: before the cache
    text = generate_latest(metrics.registry).decode()
    counts = {line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
              for line in text.splitlines() if line.startswith("sidecar_decision_seconds_count")}
    assert counts == {'cache="hit",outcome="allow"': 3.0, 'cache="miss",outcome="allow"': 1.0,
                      'cache="hit",outcome="deny"': 1.0, 'cache="none",outcome="deny"': 1.0}
    assert 'sidecar_decision_seconds_bucket{cache="hit",le="+Inf",outcome="allow"} 3.0' in text


async def test_a_denial_line_names_the_client_the_cache_result_and_the_request(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    d, _, _ = decider(required_scopes=["write"])
    await d.decide(req(["Bearer tok"]))
    headers = CIMultiDict({"x-request-id": "req-7"})
    d.decide_now(CheckRequest(["Bearer tok"], [X5T], "127.0.0.1", method="POST", path="/orders?x=1",
                              forwarded="198.51.100.4", headers=headers))
    record = [r for r in caplog.records if r.getMessage() == "deny"][-1]
    fields = {name: getattr(record, name) for name in ("reason", "cache", "client_id", "policy", "request_id",
                                                      "method", "path", "client_addr")}
    assert fields == {"reason": "scope_missing", "cache": "hit", "client_id": "alice", "policy": "default",
                      "request_id": "req-7", "method": "POST", "path": "/orders", "client_addr": "198.51.100.4"}
    assert record.latency_us >= 0  # type: ignore[attr-defined]
