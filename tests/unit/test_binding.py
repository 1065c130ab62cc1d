"""RFC 8705 §3 binding in each mode (strict, optional, off)."""

from __future__ import annotations

import hmac

import pytest

from sidecar.core import binding
from sidecar.core.binding import check_binding, needs_certificate
from sidecar.core.errors import InvalidToken
from sidecar.core.token_info import TokenInfo

BOUND = TokenInfo(active=True, cnf_x5t_s256="A" * 43)
UNBOUND = TokenInfo(active=True)

CASES = [
    # mode, token, presented, reason (None = passes)
    ("strict", BOUND, "A" * 43, None),
    ("strict", BOUND, "B" * 43, "cnf_mismatch"),
    ("strict", BOUND, None, "cert_missing"),
    ("strict", UNBOUND, "A" * 43, "token_unbound"),
    ("optional", BOUND, "A" * 43, None),
    ("optional", BOUND, "B" * 43, "cnf_mismatch"),
    ("optional", BOUND, None, "cert_missing"),
    ("optional", UNBOUND, None, None),
    ("off", BOUND, "B" * 43, None),
    ("off", UNBOUND, None, None),
]


@pytest.mark.parametrize(("mode", "info", "presented", "reason"), CASES)
def test_binding_modes(mode: str, info: TokenInfo, presented: str | None, reason: str | None) -> None:
    if reason is None:
        check_binding(info, presented, mode)  # type: ignore[arg-type]
        return
    with pytest.raises(InvalidToken) as denial:
        check_binding(info, presented, mode)  # type: ignore[arg-type]
    assert denial.value.reason == reason and denial.value.status == 401


def test_certificate_is_read_only_when_the_mode_needs_it() -> None:
    assert needs_certificate(UNBOUND, "strict")
    assert needs_certificate(BOUND, "optional")
    assert not needs_certificate(UNBOUND, "optional")
    assert not needs_certificate(BOUND, "off")


def test_thumbprints_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return original(a, b)

    monkeypatch.setattr(binding.hmac, "compare_digest", spy)
    check_binding(BOUND, "A" * 43, "strict")
    assert seen == [(b"A" * 43, b"A" * 43)]
