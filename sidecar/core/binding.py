"""Stage 3: RFC 8705 §3 certificate binding.

"the protected resource MUST obtain, from its TLS implementation layer, the client certificate
used for mutual TLS and MUST verify that the certificate matches the certificate associated with
the access token. If they do not match, the resource access attempt MUST be rejected with an
error, per [RFC6750], using an HTTP 401 status code and the invalid_token error code."

Modes: ``strict`` (the token must be bound and the presented certificate must match),
``optional`` (checked when the token is bound), ``off`` (not checked).
"""

from __future__ import annotations

import hmac

from sidecar.config import BindingMode
from sidecar.core.errors import InvalidToken
from sidecar.core.token_info import TokenInfo


def needs_certificate(info: TokenInfo, mode: BindingMode) -> bool:
    """Whether the presented certificate must be read at all for this token."""
    return mode == "strict" or (mode == "optional" and info.cnf_x5t_s256 is not None)


def check_binding(info: TokenInfo, presented: str | None, mode: BindingMode) -> None:
    """Raise InvalidToken unless the token is bound to ``presented`` as ``mode`` requires."""
    if mode == "off":
        return
    expected = info.cnf_x5t_s256
    if expected is None:
        if mode == "strict":
            raise InvalidToken("token_unbound", "token has no cnf.x5t#S256 (binding strict)")
        return
    if presented is None:
        raise InvalidToken("cert_missing", "token is bound but no client certificate was presented")
    # Constant time: the thumbprint an attacker presents must not leak how much of it matched.
    # surrogatepass: a cnf from JSON may hold a lone surrogate; it must mismatch, not raise.
    if not hmac.compare_digest(expected.encode("utf-8", "surrogatepass"), presented.encode()):
        raise InvalidToken("cnf_mismatch", "cnf.x5t#S256 differs from the presented certificate")
