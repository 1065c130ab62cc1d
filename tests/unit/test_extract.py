from __future__ import annotations

import pytest

from sidecar.core.errors import InvalidRequest, MissingToken
from sidecar.core.extract import TrustedProxies, bearer_token


@pytest.mark.parametrize(
    ("values", "token"),
    [(["Bearer abc.def-_~+/="], "abc.def-_~+/="), (["bearer abc"], "abc"), (["BEARER  abc "], "abc")],
)
def test_accepts_one_bearer_credential_with_any_scheme_case(values: list[str], token: str) -> None:
    assert bearer_token(values) == token


@pytest.mark.parametrize("values", [[], ["Basic dXNlcjpwYXNz"], ["DPoP abc"]])
def test_no_bearer_credentials_is_missing_token_without_error_code(values: list[str]) -> None:
    with pytest.raises(MissingToken) as info:
        bearer_token(values)
    assert info.value.status == 401 and info.value.error is None


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        (["Bearer a", "Bearer b"], "token_duplicated"),
        (["Bearer"], "token_malformed"),
        (["Bearer "], "token_malformed"),
        (["Bearer a b"], "token_malformed"),
        (["Bearer a,b"], "token_malformed"),
        (["Bearer a\x00b"], "token_malformed"),
        (["Bearer tök"], "token_malformed"),
        (["Bearer " + "a" * 20000], "token_malformed"),
    ],
)
def test_malformed_or_duplicated_credentials_are_invalid_request(values: list[str], reason: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        bearer_token(values)
    assert info.value.reason == reason and info.value.status == 400


def test_trusted_proxies_match_cidrs_and_ipv4_mapped_addresses() -> None:
    trusted = TrustedProxies(["10.0.0.0/8", "::1/128"])
    assert "10.1.2.3" in trusted
    assert "::ffff:10.1.2.3" in trusted
    assert "::1" in trusted
    assert "127.0.0.1" not in trusted
    assert None not in trusted
    assert "not-an-ip" not in trusted
