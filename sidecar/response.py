"""Stage 5: what the proxy receives: sanitized ``x-credential-*`` headers on allow, and an
RFC 6750 §3 ``WWW-Authenticate: Bearer`` challenge with a small JSON body on deny.

Upstream headers are built once per token, when it enters the cache. Every configured header is
present on allow, empty when the claim is absent, so a copy sent by the client can never reach
the upstream through Envoy (which keeps client headers the service does not return).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from .config import ResponseConfig
from .errors import Denial
from .token_info import TokenInfo

# C0 controls (CR, LF, NUL, ...), DEL and C1 controls never reach a header value, nor lone
# surrogates (JSON "\\ud800" decodes to one; it cannot be encoded and would fail the response).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

STANDARD_HEADERS: tuple[tuple[str, str], ...] = (
    ("sub", "sub"),
    ("client_id", "client-id"),
    ("scope", "scope"),
    ("iss", "iss"),
    ("aud", "aud"),
    ("exp", "exp"),
    ("iat", "iat"),
    ("jti", "jti"),
    ("token_type", "token-type"),
    ("username", "username"),
    ("cnf_x5t_s256", "cnf-x5t-s256"),
)


def sanitize(value: str, max_length: int) -> str:
    """Strip control characters (no header splitting) and bound the length."""
    return _CONTROL.sub("", value)[:max_length].strip(" \t")


class HeaderBuilder:
    """Builds the upstream headers of one token from the configured prefix and claim map."""

    def __init__(self, config: ResponseConfig) -> None:
        prefix = config.prefix.lower()
        self._standard = tuple((attr, prefix + suffix) for attr, suffix in STANDARD_HEADERS)
        self._extra = tuple((claim, prefix + suffix.lower()) for claim, suffix in config.claims.items())
        self._max = config.max_value_length
        self._remove = ", ".join(h.lower() for h in config.remove_upstream_headers)

    @property
    def extra_claims(self) -> tuple[str, ...]:
        return tuple(claim for claim, _ in self._extra)

    @property
    def names(self) -> tuple[str, ...]:
        """Every header an allow carries (the proxy config must set or clear each)."""
        return tuple(h for _, h in self._standard) + tuple(h for _, h in self._extra)

    def build(self, info: TokenInfo) -> dict[str, str]:
        headers: dict[str, str] = {}
        for attr, name in self._standard:
            headers[name] = self._text(getattr(info, attr))
        extra = info.extra or {}
        for claim, name in self._extra:
            headers[name] = self._text(extra.get(claim))
        if self._remove:
            headers["x-envoy-auth-headers-to-remove"] = self._remove
        return headers

    def _text(self, value: object) -> str:
        if value is None:
            return ""
        if isinstance(value, tuple):
            value = " ".join(value)
        return sanitize(str(value), self._max)


def _quote(value: str) -> str:
    """RFC 9110 §5.6.4 quoted-string: escape backslash and double quote."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def deny_headers(denial: Denial, realm: str) -> dict[str, str]:
    """RFC 6750 §3 challenge; no ``error`` attribute when the request had no credentials."""
    if denial.status == 503:
        return {"Retry-After": str(denial.retry_after), "Cache-Control": "no-store"}
    parts = [f"Bearer realm={_quote(realm)}"]
    if denial.error:
        parts.append(f"error={_quote(denial.error)}")
        parts.append(f"error_description={_quote(denial.description)}")
    if denial.scope:
        parts.append(f"scope={_quote(denial.scope)}")
    return {"WWW-Authenticate": ", ".join(parts), "Cache-Control": "no-store"}


def deny_body(denial: Denial) -> bytes:
    body: Mapping[str, str | None] = {
        "error": denial.error or ("temporarily_unavailable" if denial.status == 503 else "unauthorized"),
        "reason": denial.reason,
    }
    return json.dumps(body, separators=(",", ":")).encode()
