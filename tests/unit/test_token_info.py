from __future__ import annotations

import pytest

from sidecar.core.token_info import MalformedTokenInfo, token_info_from_claims


def test_full_introspection_answer_becomes_token_info() -> None:
    info = token_info_from_claims(
        {"active": True, "scope": "read write", "client_id": "c", "username": "u", "token_type": "Bearer",
         "exp": 200, "iat": 100, "nbf": 100.5, "sub": "s", "aud": ["a", "b"], "iss": "https://i",
         "jti": "j", "cnf": {"x5t#S256": "T"}, "tenant": "t1", "roles": ["x", "y"], "other": 1},
        extra_claims=("tenant", "roles", "missing"),
    )
    assert info.active and info.scopes == {"read", "write"} and info.aud == ("a", "b")
    assert info.nbf == 100 and info.cnf_x5t_s256 == "T" and info.bound
    assert info.extra == {"tenant": "t1", "roles": "x y"}


def test_inactive_answer_keeps_nothing_else() -> None:
    info = token_info_from_claims({"active": False, "sub": "s", "cnf": {"x5t#S256": "T"}})
    assert not info.active and info.sub is None and not info.bound


@pytest.mark.parametrize(
    ("payload", "claim"),
    [
        ([], "JSON object"), ({}, "active"), ({"active": "true"}, "active"),
        ({"active": True, "exp": "1"}, "exp"), ({"active": True, "exp": True}, "exp"),
        ({"active": True, "aud": [1]}, "aud"), ({"active": True, "scope": ["a"]}, "scope"),
        ({"active": True, "cnf": "x"}, "cnf"), ({"active": True, "cnf": {"x5t#S256": 5}}, "cnf.x5t#S256"),
    ],
)
def test_wrong_types_are_malformed_and_name_the_claim(payload: object, claim: str) -> None:
    with pytest.raises(MalformedTokenInfo, match=claim.replace(".", r"\.")):
        token_info_from_claims(payload)


def test_jwt_claims_can_be_declared_active_by_the_caller() -> None:
    assert token_info_from_claims({"sub": "s"}, active=True).sub == "s"
