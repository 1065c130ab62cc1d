"""Stage 0 (core/target.py): the description of the original request, judged before the token is
looked up: the origin against ``routing.origins``, each describing header once (fronts/repeated.py
names them), one path check wherever the path decides the policy."""

from __future__ import annotations

from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from sidecar import config as config_module
from sidecar.config import ConfigError, RoutingConfig
from sidecar.core.decision import Decider
from sidecar.core.errors import Denial
from sidecar.core.extract import TrustedProxies
from sidecar.core.outcome import Deny, Miss
from sidecar.core.request import CheckRequest
from sidecar.core.target import RequestTarget
from sidecar.core.token_info import TokenInfo
from sidecar.fronts.repeated import RepeatedHeaders
from sidecar.support.metrics import Metrics

pytestmark = pytest.mark.routes

ORIGINS = ("https://api.example.com", "https://api.example.com:8443", "http://plain.example", "https://[::1]:9443")


def target(origins: tuple[str, ...] = ORIGINS, choosing: bool = False) -> RequestTarget:
    return RequestTarget(RoutingConfig(origins=origins), TrustedProxies(["127.0.0.1/32"]), choosing=choosing)


def verdict(stage: RequestTarget, host: str | None, scheme: str | None = "https", *, peer: str = "127.0.0.1",
            path: str | None = "/orders") -> str | None:
    found = stage.check(CheckRequest([], (), peer, method="GET", path=path, host=host, scheme=scheme))
    return None if found is None else found.reason


@pytest.mark.parametrize(("host", "scheme", "expected"), [
    ("api.example.com", "https", None),
    ("API.Example.COM.", "https", None),             # case and a final dot, as Host allows
    ("api.example.com:443", "https", None),
    ("api.example.com:8443", "https", None),
    ("api.example.com:9999", "https", "origin_not_allowed"),  # a port that is not declared
    ("api.example.com", "http", "origin_not_allowed"),        # a scheme that is not declared for it
    ("plain.example", "http", None),
    ("plain.example:80", "http", None),
    ("plain.example", "https", "origin_not_allowed"),
    ("[::1]:9443", "https", None),
    ("other.example", "https", "origin_not_allowed"),
    ("api.example.com.evil.test", "https", "origin_not_allowed"),
    ("api.example.com@evil.test", "https", "origin_not_allowed"),
    ("api.example.com/x", "https", "origin_not_allowed"),
    ("", "https", "origin_not_allowed"),
    (None, "https", "origin_not_allowed"),
    ("api.example.com", None, "origin_not_allowed"),
    ("api.example.com", "HTTPS", "origin_not_allowed"),
])
def test_the_scheme_and_host_must_be_a_declared_origin(host: str | None, scheme: str | None,
                                                       expected: str | None) -> None:
    stage = target()
    assert verdict(stage, host, scheme) == expected
    assert verdict(stage, host, scheme) == expected  # the memoized answer is the same


def test_a_host_without_a_port_may_be_any_declared_origin_of_its_name_and_a_dpop_htu_any_of_them() -> None:
    """nginx's $host carries no port: both declared origins of api.example.com are candidates."""
    stage = target()
    request = CheckRequest([], (), "127.0.0.1", method="GET", path="/orders?x=1", host="api.example.com",
                           scheme="https")
    assert stage.uris(request) == ("https://api.example.com/orders?x=1", "https://api.example.com:8443/orders?x=1")
    request.host = "api.example.com:8443"
    assert stage.uris(request) == ("https://api.example.com:8443/orders?x=1",)
    request.host = "other.example"
    assert stage.uris(request) == ()


def test_without_origins_the_htu_is_built_from_what_the_proxy_sent_and_any_host_passes() -> None:
    stage = target(origins=())
    request = CheckRequest([], (), "127.0.0.1", method="GET", path="/o", host="any.example:8443", scheme="https")
    assert stage.check(request) is None and stage.uris(request) == ("https://any.example:8443/o",)
    request.path = "*"
    assert stage.uris(request) == ()


def test_a_target_with_a_hash_has_no_uri_a_dpop_htu_could_name() -> None:
    """nginx ends the path at ``#`` and sends the whole target upstream: a proof for ``/o`` must not
    pass for ``/o#/../admin``, with or without declared origins."""
    for stage in (target(origins=()), target()):
        request = CheckRequest([], (), "127.0.0.1", method="GET", path="/o#/../admin", host="api.example.com",
                               scheme="https")
        assert stage.uris(request) == ()
        request.path = "/o?q#/../admin"
        assert stage.uris(request) == ()
        request.path = "/o?q"
        assert stage.uris(request) != ()


def test_an_untrusted_peer_cannot_vouch_for_an_origin() -> None:
    assert verdict(target(), "api.example.com", peer="192.0.2.1") == "origin_not_allowed"


def test_a_describing_header_sent_twice_is_refused_whatever_else_holds() -> None:
    for stage in (target(), target(origins=())):
        found = stage.check(CheckRequest([], (), "127.0.0.1", host="api.example.com", scheme="https",
                                         repeated=["x-original-uri"]))
        assert isinstance(found, Denial) and found.reason == "request_header_duplicated" and found.status == 400


@pytest.mark.parametrize(("names", "expected"), [
    (["Host", "X-Original-URI", "Authorization", "Authorization"], []),  # Authorization: extract.py's rule
    (["X-Original-URI", "x-original-uri"], ["x-original-uri"]),
    (["X-Sidecar-Policy", "X-SIDECAR-POLICY", "X-Forwarded-For", "x-forwarded-for"],
     ["x-sidecar-policy", "x-forwarded-for"]),
    (["X-Forwarded-Host", "X-Forwarded-Host-Extra", "X-Forwarded-Hostx"], []),  # whole names only
    (["X-Forwarded-Proto", "X-Forwarded-Proto", "X-Forwarded-Proto"], ["x-forwarded-proto"]),
    (["X_Original_URI", "X-Original-URI"], []),  # another name: the sidecar reads X-Original-URI only
])
def test_the_front_names_each_describing_header_sent_more_than_once(names: list[str], expected: list[str]) -> None:
    repeated = RepeatedHeaders("x-sidecar-policy", "X-Forwarded-For")
    found = repeated.in_headers(CIMultiDictProxy(CIMultiDict([(name, "v") for name in names])))
    assert sorted(found) == sorted(expected)


def test_the_path_is_judged_only_where_it_decides_the_policy() -> None:
    assert verdict(target(origins=()), None, path="/a;b") is None  # one policy: nothing to choose
    assert verdict(target(origins=(), choosing=True), None, path="/a;b") == "path_invalid"
    assert verdict(target(origins=(), choosing=True), None, path=None) == "path_invalid"
    assert verdict(target(origins=(), choosing=True), None, path="/a;b", peer="192.0.2.1") is None  # not described


@pytest.mark.parametrize("value", ["api.example.com", "https://API.example.com", "https://api.example.com/x",
                                   "https://user@api.example.com", "ftp://api.example.com", "https://api.example.com:0",
                                   "https://api.example.com:70000", "https://api.example.com?x", "https://"])
def test_an_origin_that_is_not_scheme_host_and_port_is_refused_at_start(value: str) -> None:
    with pytest.raises(ConfigError, match=r"routing\.origins"):
        config_module.from_mapping({"routing": {"origins": [value]}})


def test_dpop_without_a_declared_origin_is_warned_about() -> None:
    warned = config_module.warnings(config_module.from_mapping({"dpop": {"enabled": True}}))
    assert any("routing.origins" in w and "htu" in w for w in warned)
    declared = config_module.from_mapping({"dpop": {"enabled": True}, "routing": {"origins": ["https://a.example"]}})
    assert not any("routing.origins" in w for w in config_module.warnings(declared))


class Verifier:
    calls = 0

    async def verify(self, token: str, issuers: tuple[str, ...] = ()) -> TokenInfo:
        Verifier.calls += 1
        return TokenInfo(active=True)


async def test_the_decision_refuses_an_undeclared_origin_before_the_token_is_looked_up() -> None:
    config: dict[str, Any] = {"routing": {"origins": ["https://api.example.com"]}, "policy": {"binding": "off"}}
    decider = Decider(config_module.from_mapping(config), Verifier(), Metrics())
    denied = decider.decide_now(CheckRequest(["Bearer tok"], (), "127.0.0.1", host="evil.test", scheme="https"))
    assert isinstance(denied, Deny) and denied.denial.reason == "origin_not_allowed" and denied.token_hash is None
    assert Verifier.calls == 0 and len(decider.cache) == 0
    pending = decider.decide_now(CheckRequest(["Bearer tok"], (), "127.0.0.1", host="api.example.com", scheme="https"))
    assert isinstance(pending, Miss)
