"""The identity token (core/identity.py) and its keys (core/identity_keys.py): what it states, when
it is signed, how its keys rotate, and the configuration that turns it on."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from sidecar import config as config_module
from sidecar.config import ConfigError
from sidecar.core import identity as identity_module
from sidecar.core.decision import Decider
from sidecar.core.entry import Entry
from sidecar.core.identity_keys import SigningKeys
from sidecar.core.outcome import Deny
from sidecar.core.request import CheckRequest
from sidecar.core.token_info import TokenInfo, token_info_from_claims
from sidecar.support.metrics import Metrics
from tests.support.signing_keys import write_key

pytestmark = pytest.mark.identity

X5T = "A" * 43
EXP = 4_000_000_000
ISSUER = "https://sidecar.example"


class Verifier:
    def __init__(self, **claims: object) -> None:
        self.claims = {"active": True, "client_id": "alice", "sub": "alice@example", "scope": "read write",
                       "exp": EXP, "token_type": "Bearer", "cnf": {"x5t#S256": X5T}, "tenant": "t1", **claims}

    async def verify(self, token: str, issuers: tuple[str, ...] = ()) -> TokenInfo:
        return token_info_from_claims(json.loads(json.dumps(self.claims)), ("tenant",))


class Reader:
    def thumbprint(self, value: str) -> str:
        return value


def identity_config(key_file: Path, **sections: Any) -> config_module.Config:
    raw: dict[str, Any] = {"identity": {"key_file": str(key_file), "issuer": ISSUER},
                           "policy": {"identity": True, "identity_audience": "https://orders.internal",
                                      "identity_claims": ["tenant"]}}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_module.from_mapping(raw)


def decider(config: config_module.Config, **claims: object) -> Decider:
    d = Decider(config, Verifier(**claims), Metrics())
    d.presented._header = Reader()  # type: ignore[assignment]  # the header value is the thumbprint
    return d


def request(policy: str | None = None, cert: str | None = X5T) -> CheckRequest:
    # The path the proxy sends with its policy name (core/target.py judges it wherever policies are named).
    return CheckRequest(["Bearer tok"], [cert] if cert else [], "127.0.0.1", policy=policy, path="/orders")


def verify(token: str, keys: SigningKeys, audience: str = "https://orders.internal") -> dict[str, Any]:
    """What an upstream does (docs/identity.md): the key by kid from the JWK Set, the audience, the issuer."""
    jwks = jwt.PyJWKSet.from_dict(json.loads(keys.jwks))
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    claims: dict[str, Any] = jwt.decode(token, key, algorithms=["EdDSA", "ES256"], audience=audience, issuer=ISSUER)
    return claims


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return write_key(tmp_path / "identity.key")


async def test_an_allow_carries_a_token_that_states_the_verified_facts(key_file: Path) -> None:
    d = decider(identity_config(key_file))
    allowed = await d.decide(request())
    assert isinstance(allowed, Entry)
    assert d.identity is not None
    token = allowed.headers["x-credential-identity"]
    claims = verify(token, d.identity.keys)
    assert claims["sub"] == "alice@example" and claims["client_id"] == "alice" and claims["scope"] == "read write"
    assert claims["cnf"] == {"x5t#S256": X5T}
    assert claims["policy"] == "default" and claims["tenant"] == "t1"
    assert claims["exp"] - claims["iat"] == 60
    assert jwt.get_unverified_header(token)["typ"] == identity_module.TYP


async def test_a_cache_hit_signs_nothing_until_half_the_lifetime_is_gone(
        key_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = decider(identity_config(key_file))
    first = await d.decide(request())
    assert isinstance(first, Entry)
    signed: list[object] = []
    real_encode = jwt.encode
    monkeypatch.setattr(identity_module.jwt, "encode", lambda *a, **k: signed.append(a) or real_encode(*a, **k))
    token = first.headers["x-credential-identity"]
    for _ in range(5):
        hit = d.decide_now(request())
        assert isinstance(hit, Entry) and hit.headers["x-credential-identity"] == token
    assert signed == []
    issued = verify(token, d.identity.keys if d.identity else pytest.fail())["iat"]
    monkeypatch.setattr("sidecar.core.request.time", lambda: issued + 31.0)  # a check past half of 60 s
    renewed = d.decide_now(request())
    assert isinstance(renewed, Entry) and len(signed) == 1
    assert jwt.decode(renewed.headers["x-credential-identity"], options={"verify_signature": False})["iat"] == \
        issued + 31


async def test_the_token_never_outlives_the_access_token_and_is_then_not_signed_again(
        key_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sidecar.core.decision.time.time", lambda: 1_000_000.0)
    d = decider(identity_config(key_file), exp=1_000_020)
    allowed = await d.decide(request())
    assert isinstance(allowed, Entry)
    claims = jwt.decode(allowed.headers["x-credential-identity"], options={"verify_signature": False})
    assert claims["exp"] == 1_000_020
    assert allowed.identity_due == math.inf  # it ends with the entry


async def test_a_denied_request_gets_no_token_signed(key_file: Path) -> None:
    d = decider(identity_config(key_file))
    denied = await d.decide(request(cert="B" * 43))
    assert isinstance(denied, Deny) and denied.denial.reason == "cnf_mismatch"
    entry = d.cache.get(d.cache.key("tok"))
    assert entry is not None and entry.headers["x-credential-identity"] == ""


async def test_each_policy_signs_its_own_audience_and_a_policy_without_identity_sends_an_empty_header(
        key_file: Path) -> None:
    config = identity_config(key_file)
    raw_policies = {"billing": {"identity": True, "identity_audience": "https://billing.internal", "binding": "off"},
                    "plain": {}}
    config = config_module.from_mapping({"identity": {"key_file": str(key_file), "issuer": ISSUER},
                                         "policy": {"identity": True, "identity_audience": "https://orders.internal"},
                                         "policies": raw_policies})
    d = decider(config)
    default = await d.decide(request())
    billing = d.decide_now(request("billing"))
    plain = d.decide_now(request("plain"))
    assert isinstance(default, Entry) and isinstance(billing, Entry) and isinstance(plain, Entry)
    assert d.identity is not None
    assert verify(default.headers["x-credential-identity"], d.identity.keys)["policy"] == "default"
    claims = verify(billing.headers["x-credential-identity"], d.identity.keys, "https://billing.internal")
    assert claims["policy"] == "billing"
    assert "cnf" not in claims  # binding off: the certificate was not compared, so it is not stated
    assert plain.headers["x-credential-identity"] == ""


async def test_a_dpop_bound_token_states_the_key_thumbprint(key_file: Path) -> None:
    d = decider(identity_config(key_file, dpop={"enabled": True}), cnf={"jkt": "J" * 43})
    assert d.identity is not None
    info = await d._verifier.verify("tok")
    entry = Entry(info=info, headers=d.policies.headers.build(info), denial=None, scope_denial=None, token_hash="h")
    d.identity.renew(entry, d.policies.default, 1_000_000.0)
    claims = jwt.decode(entry.headers["x-credential-identity"], options={"verify_signature": False})
    assert claims["cnf"] == {"jkt": "J" * 43}


@pytest.mark.parametrize("kind,alg", [("ed25519", "EdDSA"), ("p256", "ES256")])
def test_the_algorithm_follows_the_key(tmp_path: Path, kind: str, alg: str) -> None:
    keys = SigningKeys(identity_config(write_key(tmp_path / "k", kind)).identity)
    assert keys.signing.alg == alg
    [published] = json.loads(keys.jwks)["keys"]
    assert published["alg"] == alg and published["use"] == "sig" and "d" not in published


@pytest.mark.parametrize("kind", ["rsa", "p384"])
def test_a_key_of_another_kind_is_a_configuration_error(tmp_path: Path, kind: str) -> None:
    with pytest.raises(ConfigError, match=r"identity\.key_file: an Ed25519 or P-256"):
        identity_config(write_key(tmp_path / "k", kind))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def kids(keys: SigningKeys) -> list[str]:
    return [k["kid"] for k in json.loads(keys.jwks)["keys"]]


def test_a_new_key_is_published_first_signs_after_the_overlap_and_the_old_one_is_withdrawn_after_another(
        tmp_path: Path) -> None:
    key_file = write_key(tmp_path / "k")
    jwks_file = tmp_path / "jwks.json"
    config = identity_config(key_file, identity={"rotation_overlap": 100.0, "jwks_file": str(jwks_file)}).identity
    clock = Clock()
    keys = SigningKeys(config, clock)
    old = keys.signing.kid
    assert kids(keys) == [old] and json.loads(jwks_file.read_bytes()) == json.loads(keys.jwks)
    write_key(key_file)
    clock.now += 1
    assert keys.poll() is True
    new = kids(keys)[1]
    assert keys.signing.kid == old and kids(keys) == [old, new]  # published, not signing yet
    clock.now += 99.5
    assert keys.poll() is False and keys.signing.kid == old
    clock.now += 1
    keys.poll()
    assert keys.signing.kid == new and kids(keys) == [new, old]  # signing; the old one still published
    clock.now += 99.5
    assert keys.poll() is False
    clock.now += 1
    assert keys.poll() is True and kids(keys) == [new]
    assert json.loads(jwks_file.read_bytes()) == {"keys": [keys.signing.jwk]}


def test_a_key_file_that_stops_loading_keeps_the_current_key(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    key_file = write_key(tmp_path / "k")
    keys = SigningKeys(identity_config(key_file).identity, Clock())
    before = keys.signing.kid
    key_file.write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    assert keys.poll() is False and keys.signing.kid == before
    assert "does not load" in caplog.text and "garbage" not in caplog.text


Rule = Callable[[Path], dict[str, Any]]
RULES: dict[str, tuple[Rule, str]] = {
    "a policy with identity needs the key": (
        lambda k: {"policy": {"identity": True, "identity_audience": "x"}}, "identity.key_file: is required"),
    "a policy with identity needs an audience": (
        lambda k: {"identity": {"key_file": str(k), "issuer": ISSUER}, "policy": {"identity": True}},
        "policy.identity_audience: is required"),
    "the key needs an issuer": (lambda k: {"identity": {"key_file": str(k)}}, "identity.issuer: is required"),
    "the header stays in the credential namespace": (
        lambda k: {"identity": {"key_file": str(k), "issuer": ISSUER, "header": "x-identity"}},
        "identity.header: must be a name in the response.prefix namespace"),
    "the header is not a standard one": (
        lambda k: {"identity": {"key_file": str(k), "issuer": ISSUER, "header": "x-credential-sub"}},
        "already a credential header"),
    "copied claims cannot replace the sidecar's": (
        lambda k: {"identity": {"key_file": str(k), "issuer": ISSUER},
                   "policy": {"identity": True, "identity_audience": "x", "identity_claims": ["sub"]}},
        "policy.identity_claims: the sidecar sets sub itself"),
    "the overlap covers a token's lifetime": (
        lambda k: {"identity": {"key_file": str(k), "issuer": ISSUER, "ttl": 120, "rotation_overlap": 60.0}},
        "identity.rotation_overlap: must be at least identity.ttl"),
}


@pytest.mark.parametrize("rule", list(RULES))
def test_the_configuration_refuses(rule: str, key_file: Path) -> None:
    raw, message = RULES[rule]
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        config_module.from_mapping(raw(key_file))


def test_without_identity_no_header_is_added_and_nothing_is_signed() -> None:
    d = Decider(config_module.from_mapping({}), Verifier(), Metrics())
    assert d.identity is None and "x-credential-identity" not in d.policies.headers.names
