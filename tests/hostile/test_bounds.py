"""Issue 11: parsers stay linear, memory stays bounded in bytes, scopes split on SP only, and a
confirmation method the sidecar cannot verify never passes as unbound."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from urllib.parse import quote

import pytest

from sidecar import config as config_module
from sidecar.core.client_cert import CertificateError, CertificateReader
from sidecar.core.policy import Policy
from sidecar.core.token_info import token_info_from_claims
from tests.hostile.material import certificates


def _best_of(runs: int, work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def _read(value: str, fmt: str) -> None:
    with contextlib.suppress(CertificateError):
        CertificateReader(fmt, max_size=1 << 20, memo_bytes=1 << 22).thumbprint(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["pem", "escaped_pem", "auto", "xfcc"])
def test_a_header_of_begin_lines_costs_time_linear_in_its_size(fmt: str) -> None:
    """Eight times the input may cost about eight times the time, not sixty-four (quadratic): the
    ratio is compared within one run, on the best of several tries, with a wide margin."""
    line = "-----BEGIN CERTIFICATE-----" if fmt == "pem" else quote("-----BEGIN CERTIFICATE----- ")
    small, large = line * 200, line * 1600
    if fmt == "xfcc":
        small, large = f'Cert="{small}"', f'Cert="{large}"'
    t_small = _best_of(5, lambda: _read(small, fmt))
    t_large = _best_of(5, lambda: _read(large, fmt))
    assert t_large < 24 * max(t_small, 1e-6), (t_small, t_large)


def test_the_thumbprint_memo_holds_no_more_bytes_than_configured() -> None:
    reader = CertificateReader("escaped_pem", max_size=16384, memo_bytes=200_000)
    pem = quote(certificates()[1].pem, safe="")
    for i in range(2000):  # distinct 10 KB values, as a client with a valid token could send
        with contextlib.suppress(CertificateError):
            reader.thumbprint(pem + "%0A" * (3000 + i))
    assert 0 < reader._memo.bytes <= 200_000


def test_a_certificate_header_over_max_size_is_refused_before_any_parsing() -> None:
    reader = CertificateReader("escaped_pem", max_size=4096)
    with pytest.raises(CertificateError, match="max_size"):
        reader.thumbprint("A" * 5000)
    assert len(reader._memo) == 0


@pytest.mark.parametrize("separator", ["\x1f", "\t", "\xa0", "\u2003", "\x85", "\n"])
def test_scope_tokens_are_separated_by_space_only(separator: str) -> None:
    """RFC 6749 §3.3: ``read<sep>admin`` is one (invalid) scope token, never ``admin``."""
    info = token_info_from_claims({"active": True, "scope": f"read{separator}admin", "token_type": "Bearer"})
    assert "admin" not in info.scopes
    policy = Policy(config_module.PolicyConfig(required_scopes=("admin",)))
    denial = policy.scope_denial(info)
    assert denial is not None and denial.reason == "scope_missing"


@pytest.mark.parametrize("binding", ["off", "optional", "strict"])
@pytest.mark.parametrize("member", ["jkt", "x5t", "jwk", "kid"])
def test_a_cnf_member_the_sidecar_cannot_verify_denies_whatever_the_binding_mode(binding: str, member: str) -> None:
    info = token_info_from_claims({"active": True, "token_type": "Bearer", "cnf": {member: "A" * 43}})
    denial = Policy(config_module.PolicyConfig(binding=binding)).static_denial(info)  # type: ignore[arg-type]
    assert denial is not None and denial.reason == "cnf_unsupported" and denial.status == 401


@pytest.mark.parametrize("claims", [
    {"token_type": None},  # oidc-provider's refresh token: no token_type
    {"token_type": "Bearer", "token_use": "refresh_token"},  # Ory Hydra
    {"token_type": "Bearer", "typ": "Refresh"},  # Keycloak
    {"token_type": "Bearer", "typ": "Offline"},  # Keycloak offline token
])
def test_refresh_token_shapes_are_not_access_tokens(claims: dict[str, object]) -> None:
    record = {"active": True, **{k: v for k, v in claims.items() if v is not None}}
    denial = Policy(config_module.PolicyConfig(binding="off")).static_denial(token_info_from_claims(record))
    assert denial is not None and denial.reason == "token_not_access"
