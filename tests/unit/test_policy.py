from __future__ import annotations

import pytest

from sidecar.config import PolicyConfig
from sidecar.core.errors import InvalidToken
from sidecar.core.policy import Policy
from sidecar.core.token_info import TokenInfo

TOKEN = TokenInfo(active=True, iss="https://idp", aud=("api", "other"), scopes=frozenset({"read"}),
                  exp=1000, nbf=500)


def test_allows_a_token_that_meets_every_rule() -> None:
    policy = Policy(PolicyConfig(allowed_issuers=("https://idp",), audiences=("api",), required_scopes=("read",)))
    assert policy.static_denial(TOKEN) is None and policy.scope_denial(TOKEN) is None
    policy.check_time(TOKEN, 900)


@pytest.mark.parametrize(
    ("config", "info", "reason"),
    [
        (PolicyConfig(), TokenInfo(active=False), "token_inactive"),
        (PolicyConfig(allowed_issuers=("https://other",)), TOKEN, "issuer_not_allowed"),
        (PolicyConfig(allowed_issuers=("https://idp",)), TokenInfo(active=True), "issuer_not_allowed"),
        (PolicyConfig(audiences=("billing",)), TOKEN, "audience_mismatch"),
    ],
)
def test_static_denials(config: PolicyConfig, info: TokenInfo, reason: str) -> None:
    denial = Policy(config).static_denial(info)
    assert denial is not None and denial.reason == reason and denial.status == 401


def test_missing_scope_is_403_insufficient_scope_naming_the_required_scopes() -> None:
    denial = Policy(PolicyConfig(required_scopes=("read", "write"))).scope_denial(TOKEN)
    assert denial is not None
    assert (denial.status, denial.error, denial.reason, denial.scope) == (
        403, "insufficient_scope", "scope_missing", "read write")


@pytest.mark.parametrize(("now", "reason"), [(1006, "token_expired"), (494, "token_not_yet_valid")])
def test_time_window_with_leeway(now: float, reason: str) -> None:
    policy = Policy(PolicyConfig(leeway=5))
    policy.check_time(TOKEN, 1004)  # within leeway after exp
    policy.check_time(TOKEN, 496)  # within leeway before nbf
    with pytest.raises(InvalidToken) as denial:
        policy.check_time(TOKEN, now)
    assert denial.value.reason == reason
