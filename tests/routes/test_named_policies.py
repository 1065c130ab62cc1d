"""Named policies in the configuration: declared once, validated key by key, the default unchanged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import ConfigError, PolicyConfig, from_mapping
from sidecar.core.errors import Denial
from sidecar.core.policy import Policy
from sidecar.core.token_info import TokenInfo, token_info_from_claims

pytestmark = pytest.mark.routes

ORDERS: dict[str, Any] = {
    "policies": {
        "orders_read": {"required_scopes": ["orders:read"], "audiences": ["orders"], "binding": "optional"},
        "admin": {"required_scopes": ["admin", "root"], "scope_match": "any", "claims_equal": {"tenant": "acme"},
                  "claims_contain": {"groups": "ops"}, "claims": {"tenant": "tenant"}},
    },
    "routes": [
        {"path": "/orders", "methods": ["GET"], "policy": "orders_read"},
        {"path": "/admin", "policy": "admin"},
    ],
}


def test_an_old_single_policy_config_reads_exactly_as_before() -> None:
    config = from_mapping({"policy": {"binding": "optional", "required_scopes": ["read"]}})
    assert config.policies == {} and config.routes == ()
    assert config.policy == PolicyConfig(binding="optional", required_scopes=("read",))


def test_named_policies_take_the_keys_of_policy_from_their_declared_defaults() -> None:
    config = from_mapping({**ORDERS, "policy": {"binding": "off", "audiences": ["api"]}})
    orders = config.policies["orders_read"]
    assert orders.binding == "optional" and orders.audiences == ("orders",)
    assert config.policies["admin"].binding == "strict"  # not inherited from [policy]
    assert config.policies["admin"].scope_match == "any"
    assert [r.policy for r in config.routes] == ["orders_read", "admin"]
    assert set(config.kept_claims) == {"tenant", "groups"}


@pytest.mark.parametrize(("raw", "key"), [
    ({"policies": {"orders": {"bindng": "off"}}}, "policies.orders.bindng"),
    ({"policies": {"orders": {"binding": "loose"}}}, "policies.orders.binding"),
    ({"policies": {"orders": {"required_scopes": ["a b"]}}}, "policies.orders.required_scopes"),
    ({"policies": {"orders": {"token_formats": ["saml"]}}}, "policies.orders.token_formats"),
    ({"policies": {"orders": {"claims_contain": {"groups": ""}}}}, "policies.orders.claims_contain"),
    ({"policies": {"Orders": {}}}, "policies.Orders"),
    ({"policies": {"default": {}}}, "policies.default"),
    ({"policies": {"a": {"claims": {"tenant": "sub"}}}}, "policies.a.claims.tenant"),
    ({"policies": {"a": {"claims": {"tenant": "t"}}, "b": {"claims": {"org": "t"}}}}, "policies.b.claims.org"),
    ({"routes": [{"path": "/x", "policy": "nope"}]}, "routes[0].policy"),
    ({"routes": [{"path": "/x", "match": "regex"}, {"path": "(", "match": "regex"}]}, "routes[1].path"),
    ({"routes": [{"path": "/a/../admin"}]}, "routes[0].path"),
    ({"routes": [{"path": "/a//b"}]}, "routes[0].path"),
    ({"routes": [{"path": "/a%2fb"}]}, "routes[0].path"),
    ({"routes": [{"path": "/a/*"}]}, "routes[0].path"),
    ({"routes": [{"path": "/a", "methods": ["get"]}]}, "routes[0].methods"),
    ({"routes": [{"path": "/a", "hosts": ["API.example"]}]}, "routes[0].hosts"),
    ({"routes": [{"path": "/a", "match": "fuzzy"}]}, "routes[0].match"),
    ({"routes": {"path": "/a"}}, "routes"),
])
def test_a_bad_named_policy_or_rule_is_refused_naming_its_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_mapping(raw)
    assert caught.value.key == key


def test_named_policies_accepting_jwts_need_audiences_like_the_default() -> None:
    idp = {"jwks_uri": "https://idp.example/jwks", "token_format": "jwt"}
    base = {"idp": idp, "policy": {"audiences": ["api"], "allowed_issuers": ["https://idp.example"]}}
    with pytest.raises(ConfigError) as caught:
        from_mapping({**base, "policies": {"orders": {"required_scopes": ["x"]}}})
    assert caught.value.key == "policies.orders.audiences"
    from_mapping({**base, "policies": {"orders": {"token_formats": ["introspection"]}}})


def test_check_config_lists_the_policy_names(tmp_path: Path) -> None:
    from sidecar.dev.pki import CertificateAuthority

    cert, key = CertificateAuthority().issue("sidecar").write(tmp_path, "s")
    path = tmp_path / "sidecar.toml"
    path.write_text(f'[idp]\nissuer = "https://idp.example"\nclient_id = "s"\ncert_file = "{cert}"\n'
                    f'key_file = "{key}"\n[policies.orders_read]\nrequired_scopes = ["orders:read"]\n'
                    '[policies.admin]\nrequired_scopes = ["admin"]\n[[routes]]\npath = "/admin"\npolicy = "admin"\n')
    result = subprocess.run([sys.executable, "-m", "sidecar", "check-config", "--config", str(path)],
                            env={"PATH": "/usr/bin"}, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["configuration ok", "policies: default, orders_read, admin; rules: 1"]


TOKEN = token_info_from_claims({"active": True, "scope": "root orders:read", "token_type": "Bearer",
                                "tenant": "acme", "groups": ["dev", "ops"]}, ("tenant", "groups"))


def reason(denial: Denial | None) -> str | None:
    return None if denial is None else denial.reason


@pytest.mark.parametrize(("policy", "info", "expected"), [
    ({"required_scopes": ["admin", "root"], "scope_match": "any"}, TOKEN, None),
    ({"required_scopes": ["admin", "root"]}, TOKEN, "scope_missing"),
    ({"required_scopes": ["admin", "ops"], "scope_match": "any"}, TOKEN, "scope_missing"),
    ({"claims_equal": {"tenant": "acme"}}, TOKEN, None),
    ({"claims_equal": {"tenant": "acm"}}, TOKEN, "claim_mismatch"),
    ({"claims_equal": {"missing": "x"}}, TOKEN, "claim_mismatch"),
    ({"claims_contain": {"groups": "ops"}}, TOKEN, None),
    ({"claims_contain": {"groups": "op"}}, TOKEN, "claim_mismatch"),
    ({"claims_contain": {"tenant": "acme"}}, TOKEN, None),
])
def test_scopes_any_or_all_and_claim_conditions_deny_with_403(policy: dict[str, Any], info: TokenInfo,
                                                              expected: str | None) -> None:
    denial = Policy(PolicyConfig(**policy)).scope_denial(info)
    assert reason(denial) == expected
    assert denial is None or denial.status == 403


def test_a_policy_accepts_only_the_token_formats_it_names() -> None:
    jwt = token_info_from_claims({"active": True, "scope": "a"}, active=True)
    assert reason(Policy(PolicyConfig(token_formats=("introspection",))).static_denial(jwt)) == \
        "token_format_not_allowed"
    assert Policy(PolicyConfig(token_formats=("jwt",))).static_denial(jwt) is None
    assert reason(Policy(PolicyConfig(token_formats=("jwt",))).static_denial(TOKEN)) == "token_format_not_allowed"


def test_the_rule_keys_table_in_docs_routes_is_the_one_generated_from_the_declarations() -> None:
    from sidecar.config.table import ROUTES_BEGIN, ROUTES_END, routes_table

    text = (Path(__file__).resolve().parents[2] / "docs" / "routes.md").read_text(encoding="utf-8")
    assert text.partition(ROUTES_BEGIN)[2].partition(ROUTES_END)[0] == "\n" + routes_table(), \
        "run: python -m sidecar.config.table README.md docs/configuration.md docs/routes.md"
