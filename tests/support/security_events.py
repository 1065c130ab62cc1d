"""Security Event Tokens (RFC 8417) as a transmitter signs them, for the receiver's tests."""

from __future__ import annotations

import secrets
import time
from typing import Any

import jwt

CAEP_SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
TOKEN_REVOKED = "https://schemas.openid.net/secevent/oauth/event-type/token-revoked"
CONTENT_TYPE = "application/secevent+jwt"


def session_revoked(subject: dict[str, Any]) -> dict[str, Any]:
    """A CAEP session-revoked event naming ``subject`` (an RFC 9493 identifier)."""
    return {CAEP_SESSION_REVOKED: {"subject": subject, "event_timestamp": int(time.time())}}


def token_revoked(**subject: str) -> dict[str, Any]:
    """The OAuth token-revoked event for a token named by ``jti`` or ``token`` (plain)."""
    if "token" in subject:
        subject = {"token_identifier_alg": "plain", **subject}
    return {TOKEN_REVOKED: {"subject": {"subject_type": "oauth_token", "token_type": "access_token", **subject}}}


def signed_set(key: Any, alg: str, kid: str | None, *, iss: str, aud: str, events: dict[str, Any],
               iat: float | None = None, jti: str | None = None, typ: str = "secevent+jwt",
               **claims: Any) -> str:
    """A SET: ``events`` signed with ``key``; a fresh ``jti`` and ``iat`` now unless given."""
    payload = {"iss": iss, "aud": aud, "iat": int(time.time() if iat is None else iat),
               "jti": jti or secrets.token_hex(16), "events": events, **claims}
    headers = {"typ": typ, **({"kid": kid} if kid else {})}
    return jwt.encode(payload, key, algorithm=alg, headers=headers)
