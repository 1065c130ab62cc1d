"""core/forged.py: which check-request header names are client copies of credential headers."""

from __future__ import annotations

import pytest

from sidecar.fronts.forged import ForgedHeaders

NAMES = ["Host", "X-Original-URI", "Authorization", "X-Client-Cert", "X-Credentials", "x-credentialsub",
         "X-Credential-Sub", "x_credential_TENANT", "x-credential_group", "X-CREDENTIAL-SUB", "XX-Credential-Sub",
         "X.Credential.Scope"]


def raw(names: list[str]) -> list[tuple[bytes, bytes]]:
    return [(name.encode(), b"v") for name in names]


def test_every_spelling_an_upstream_may_read_as_the_namespace_is_found_once_lower_cased() -> None:
    found = ForgedHeaders("x-credential-")
    expected = ("x-credential-sub", "x_credential_tenant", "x-credential_group", "x.credential.scope")
    assert found.in_raw(raw(NAMES)) == expected
    assert found.in_names([n.lower() for n in NAMES]) == expected


@pytest.mark.parametrize("names", [[], ["Host", "Authorization"], ["X-Credentials", "x-credentialsub"],
                                   ["XX-Credential-Sub", "x-other-sub"]])
def test_requests_without_a_name_in_the_namespace_find_nothing(names: list[str]) -> None:
    assert ForgedHeaders("x-credential-").in_raw(raw(names)) == ()
    assert ForgedHeaders("x-credential-").in_names(names) == ()


def test_the_configured_prefix_decides_the_namespace_with_underscores_read_as_dashes() -> None:
    found = ForgedHeaders("X-Auth_")
    assert found.in_raw(raw(["x-auth-user", "X_AUTH_ROLE", "X-Credential-Sub"])) == ("x-auth-user", "x_auth_role")


def test_a_latin1_byte_in_a_name_is_read_without_error() -> None:
    assert ForgedHeaders("x-credential-").in_raw([(b"x-credential-\xe9", b"v")]) == ("x-credential-\xe9",)
