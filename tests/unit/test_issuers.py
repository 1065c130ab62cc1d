"""Several issuers (sidecar/idp/issuers.py, core/policy.py, core/cache.py): a JWT goes to the
issuer its iss names, an opaque token to the policy's issuers in order, each policy accepts only
its issuers, and an inactive answer holds only for the issuers that gave it. The issuers' own
checks are stand-ins here; tests/interop/test_issuers.py runs two real OpenID providers."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import jwt
import pytest

from sidecar import config as config_module
from sidecar.config import ConfigError
from sidecar.core.decision import Decider
from sidecar.core.entry import Entry
from sidecar.core.errors import IdpUnavailable, InvalidToken
from sidecar.core.outcome import Deny
from sidecar.core.request import CheckRequest
from sidecar.core.token_info import INACTIVE, TokenInfo
from sidecar.idp.failures import IdpError, IdpFailure
from sidecar.idp.issuers import Issuers, unverified_iss
from sidecar.support.metrics import Metrics
from tests.unit.test_hot_path import X5T, Reader

A, B = "https://a.example", "https://b.example"
ENTRA = "https://login.microsoftonline.com/{tenant}/v2.0"


def two(**extra: Any) -> dict[str, Any]:
    """[idp] (a) and [issuers.b], both introspecting and validating JWTs."""
    idp = {"client_id": "s", "auth_method": "client_secret_basic", "client_secret": "x" * 16}
    return {"idp": {"issuer": A, **idp}, "issuers": {"b": {"issuer": B, **idp}},
            "policy": {"issuers": ["default"]}, **extra}


class Answer:
    """An issuer's check: a fixed answer (or failure), and the tokens it was asked about."""

    def __init__(self, answer: TokenInfo | Exception) -> None:
        self.answer, self.asked = answer, []

    async def verify(self, token: str) -> TokenInfo:
        self.asked.append(token)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


ACTIVE = TokenInfo(active=True, client_id="alice", exp=4_000_000_000, token_type="Bearer", cnf_x5t_s256=X5T,
                   introspected=True)


def registry(raw: dict[str, Any], **answers: TokenInfo | Exception) -> tuple[Issuers, dict[str, Answer]]:
    issuers = Issuers(config_module.from_mapping(raw), Metrics())
    checks = {}
    for name, answer in answers.items():
        issuer = issuers.by_name[name][0]
        checks[name] = issuer._check = issuer.introspector = Answer(answer)  # type: ignore[assignment]
    return issuers, checks


def token(iss: str | None) -> str:
    return jwt.encode({} if iss is None else {"iss": iss}, "k" * 32, algorithm="HS256")


async def test_a_jwt_goes_to_the_issuer_its_iss_names_and_the_answer_names_that_issuer() -> None:
    issuers, checks = registry(two(), default=ACTIVE, b=ACTIVE)
    info = await issuers.verify(token(B), ("default",))
    assert info.issuer == "b" and checks["b"].asked and not checks["default"].asked


async def test_a_jwt_whose_iss_names_no_issuer_is_refused_before_any_issuer_is_asked() -> None:
    issuers, checks = registry(two(), default=ACTIVE, b=ACTIVE)
    for iss in ("https://evil.example", A + "/"):
        with pytest.raises(InvalidToken) as denied:
            await issuers.verify(token(iss), ("default", "b"))
        assert denied.value.reason == "issuer_not_allowed"
    assert not checks["default"].asked and not checks["b"].asked


async def test_a_jwt_of_unknown_iss_goes_only_to_the_policys_issuers_known_by_their_endpoint_alone() -> None:
    raw = two(issuers={"b": {"introspection_endpoint": B + "/introspect", "token_format": "introspection",
                             "client_id": "s", "auth_method": "client_secret_basic", "client_secret": "x" * 16}})
    issuers, checks = registry(raw, default=ACTIVE, b=ACTIVE)
    assert (await issuers.verify(token("https://b-tokens.example"), ("default", "b"))).issuer == "b"
    assert not checks["default"].asked  # a has an issuer of its own: the token is not a's
    with pytest.raises(InvalidToken):
        await issuers.verify(token("https://b-tokens.example"), ("default",))


async def test_an_opaque_token_is_introspected_at_the_policys_issuers_in_order_until_one_knows_it() -> None:
    issuers, checks = registry(two(), default=INACTIVE, b=ACTIVE)
    info = await issuers.verify("opaque", ("default", "b"))
    assert info.active and info.issuer == "b" and checks["default"].asked == ["opaque"]
    checks["b"].asked.clear()
    assert not (await issuers.verify("opaque", ("default",))).active  # b is not this policy's
    assert not checks["b"].asked


async def test_an_issuer_whose_answer_names_another_configured_issuer_is_refused() -> None:
    """Issuer a cannot vouch for a token as issuer b (its iss is then what policies, allowed_issuers
    and b's Security Event Tokens trust)."""
    issuers, _ = registry(two(), default=replace(ACTIVE, iss=B), b=INACTIVE)
    for presented in ("opaque", token(A)):
        with pytest.raises(InvalidToken) as denied:
            await issuers.verify(presented, ("default", "b"))
        assert denied.value.reason == "issuer_not_allowed"
    issuers, _ = registry(two(), default=replace(ACTIVE, iss=A))
    assert (await issuers.verify("opaque", ("default",))).issuer == "default"


async def test_an_introspection_answer_without_iss_names_the_issuer_that_gave_it() -> None:
    """So that the issuer's own revocation events (scoped by iss) reach its opaque tokens."""
    issuers, _ = registry(two(), default=INACTIVE, b=ACTIVE)
    assert (await issuers.verify("opaque", ("default", "b"))).iss == B
    single = {"idp": {"issuer": A, "client_id": "s", "auth_method": "client_secret_basic", "client_secret": "x" * 16}}
    issuers, _ = registry(single, default=ACTIVE)
    assert (await issuers.verify("opaque", ("default",))).iss == A


async def test_a_failing_issuer_never_makes_an_opaque_token_inactive() -> None:
    down = IdpError(IdpFailure.REFUSED, "down")
    issuers, _ = registry(two(), default=down, b=INACTIVE)
    with pytest.raises(IdpUnavailable):
        await issuers.verify("opaque", ("default", "b"))
    issuers, _ = registry(two(), default=down, b=ACTIVE)
    assert (await issuers.verify("opaque", ("default", "b"))).issuer == "b"  # one IdP down: the other's work


async def test_a_multi_tenant_issuer_takes_only_the_listed_tenants_each_with_its_own_discovery() -> None:
    raw = two(issuers={"entra": {"issuer": ENTRA, "tenants": ["t1", "t2"], "token_format": "jwt",
                                 "profile": "entra"}}, policy={"issuers": ["entra"], "audiences": ["api"]})
    issuers = Issuers(config_module.from_mapping(raw), Metrics())
    assert [i.idp.issuer for i in issuers.by_name["entra"]] == [ENTRA.format(tenant=t) for t in ("t1", "t2")]
    with pytest.raises(InvalidToken) as denied:
        await issuers.verify(token(ENTRA.format(tenant="t3")), ("entra",))
    assert denied.value.reason == "issuer_not_allowed"


def test_the_unverified_iss_is_read_only_from_a_jws_and_only_as_a_string() -> None:
    assert unverified_iss(token(A)) == A
    assert unverified_iss(token(None)) is None and unverified_iss("opaque.token") is None
    head, _, signature = token(A).split(".")
    assert unverified_iss(f"{head}.eyJpc3MiOjd9.{signature}") is None  # {"iss":7}


@pytest.mark.parametrize(("raw", "key"), [
    (two(policy={}), "policy.issuers"),
    (two(policies={"x": {"issuers": ["nope"]}}), "policies.x.issuers"),
    (two(issuers={"b": {"issuer": A, "token_format": "jwt"}}), "issuers.b.issuer"),  # the same iss twice
    (two(issuers={"b": {"jwks_uri": B + "/jwks", "token_format": "jwt"}}), "issuers.b.issuer"),  # no iss to route
    (two(issuers={"default": {"issuer": B}}), "issuers.default"),
    (two(issuers={"e": {"issuer": ENTRA, "token_format": "jwt"}}), "issuers.e.tenants"),
    (two(issuers={"e": {"issuer": ENTRA, "tenants": ["t1"]}}), "issuers.e.token_format"),
    (two(issuers={"b": {"issuer": B, "auth_method": "tls_client_auth", "client_id": "s"}}), "issuers.b.cert_file"),
    (two(policy={"issuers": ["default", "b", "default"]}), "policy.issuers"),
])
def test_an_issuer_configuration_error_names_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_module.from_mapping(raw)
    assert caught.value.key == key


def test_a_single_idp_configuration_needs_no_issuers_anywhere() -> None:
    config = config_module.from_mapping({"idp": {"issuer": A, "client_id": "s", "auth_method": "client_secret_basic",
                                                 "client_secret": "x" * 16}, "policies": {"p": {}}})
    assert config.policy_issuers(config.policy) == ("default",) == config.policy_issuers(config.policies["p"])


class Routed:
    """The registry as the decision sees it: b knows the token, a does not."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, ...]] = []

    async def verify(self, token: str, issuers: tuple[str, ...]) -> TokenInfo:
        self.asked.append(issuers)
        return replace(ACTIVE, issuer="b") if "b" in issuers else INACTIVE


def request(policy: str | None) -> CheckRequest:
    # The path the proxy sends with its policy name (core/target.py judges it wherever policies are named).
    return CheckRequest(["Bearer opaque"], [X5T], "127.0.0.1", policy=policy, path="/orders")


async def test_an_inactive_answer_holds_only_for_the_issuers_that_gave_it_and_each_policy_checks_its_own() -> None:
    raw = two(policies={"both": {"issuers": ["default", "b"]}, "only_b": {"issuers": ["b"]}})
    verifier = Routed()
    d = Decider(config_module.from_mapping(raw), verifier, Metrics())
    d.presented._header = Reader()  # type: ignore[assignment]  # the header value is the thumbprint
    first = await d.decide(request(None))  # [policy]: issuer a only, which does not know it
    assert isinstance(first, Deny) and first.denial.reason == "token_inactive"
    assert isinstance(d.decide_now(request(None)), Deny)  # cached for a's route
    assert isinstance(await d.decide(request("both")), Entry)  # not for this one: b is asked, and knows it
    assert verifier.asked == [("default",), ("default", "b")]
    assert isinstance(d.decide_now(request("only_b")), Entry)  # b's answer, a hit under b's policy
    refused = d.decide_now(request(None))  # and b's answer is no answer under a's policy
    assert isinstance(refused, Deny) and refused.denial.reason == "issuer_not_allowed"
