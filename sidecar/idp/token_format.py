"""Which verifier applies to a token: RFC 7662 introspection or RFC 9068 local validation.

``idp.token_format``:

- ``introspection``: every token is introspected.
- ``jwt``: every token is validated locally; a token that is not a JWT is ``jwt_malformed``.
- ``jwt_then_introspection``: a token whose JOSE header declares ``typ`` ``at+jwt`` (RFC 9068
  §2.1) is validated locally and that verdict is final: a bad signature, an unknown key, an
  expired token or an unavailable JWK Set is never retried by introspection. Every other token
  (opaque, JWE, a JWT of another ``typ``) is introspected.
- ``auto`` (default): a token of JWT shape (three base64url segments, the first a JSON object
  with ``alg``) is validated locally when the issuer has a ``jwks_uri`` (configured or
  discovered); every other token is introspected. Local validation needs ``policy.audiences``
  (RFC 9068 §4: the resource server MUST check ``aud``) and an expected issuer (``idp.issuer``
  or ``policy.allowed_issuers``) of the first policy that accepts the issuer (``[policy]`` when
  it does): without them ``auto`` introspects everything.

``jwt`` and ``jwt_then_introspection`` refuse to start without those settings (config/rules.py).
Each issuer has its own mode: with several, the one a JWT's ``iss`` names decides.
"""

from __future__ import annotations

import binascii
import logging
import re
from collections.abc import Collection
from typing import Any, Protocol

from sidecar.config import Config, IdpConfig
from sidecar.core.token_info import TokenInfo
from sidecar.idp.discovery import Discovery
from sidecar.idp.jwks import Jwks
from sidecar.idp.jwt_access_token import ACCESS_TOKEN_TYPES, JwtAccessTokenVerifier
from sidecar.support.jose import json_segment

log = logging.getLogger(__name__)
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
MAX_HEADER_CHARS = 4096


def jwt_header(token: str) -> dict[str, Any] | None:
    """The JOSE header when ``token`` has JWS compact shape, else None. Nothing is verified."""
    parts = token.split(".")
    if len(parts) != 3 or len(parts[0]) > MAX_HEADER_CHARS:
        return None
    head, body, signature = parts
    if not (_SEGMENT.fullmatch(head) and _SEGMENT.fullmatch(body)) or not _SEGMENT.fullmatch(signature or "A"):
        return None
    try:
        header = json_segment(head)
    except (ValueError, binascii.Error):
        return None
    return header if isinstance(header, dict) and isinstance(header.get("alg"), str) else None


def declares_access_token(header: dict[str, Any]) -> bool:
    typ = header.get("typ")
    return isinstance(typ, str) and typ.lower() in ACCESS_TOKEN_TYPES


class Check(Protocol):
    """One issuer's way of saying what a token is (introspection, or local validation)."""

    async def verify(self, token: str) -> TokenInfo: ...


def local_jwt_enabled(config: Config, name: str = "default") -> bool:
    """Whether issuer ``name`` validates any token locally (and so needs the JWK Set)."""
    idp = config.every_issuer[name]
    mode = idp.token_format
    if mode in ("jwt", "jwt_then_introspection"):
        return True
    accepting = [p for p in (config.policy, *config.policies.values()) if name in config.policy_issuers(p)]
    return mode == "auto" and bool(accepting) and bool(accepting[0].audiences) and bool(
        idp.issuer or accepting[0].allowed_issuers
    )


class TokenFormatVerifier:
    """A :class:`Check` that routes each token per ``idp.token_format``."""

    def __init__(
        self, mode: str, introspector: Check | None, local: Check | None, discovery: Discovery,
        jwks_uri: str | None = None,
    ) -> None:
        self._mode = mode
        self._introspector = introspector
        self._local = local
        self._discovery = discovery
        self._jwks_uri_configured = jwks_uri is not None

    async def verify(self, token: str) -> TokenInfo:
        return await (await self._choose(token)).verify(token)

    async def _choose(self, token: str) -> Check:
        if self._local is None:
            assert self._introspector is not None  # built so by choose_verifier
            return self._introspector
        if self._introspector is None:
            return self._local
        header = jwt_header(token)
        if header is None:
            return self._introspector
        if self._mode == "jwt_then_introspection":
            return self._local if declares_access_token(header) else self._introspector
        return self._local if await self._jwks_uri_known() else self._introspector

    async def _jwks_uri_known(self) -> bool:
        if self._jwks_uri_configured:
            return True
        return (await self._discovery.get()).jwks_uri is not None  # DiscoveryError: a 503


def choose_verifier(idp: IdpConfig, kept_claims: Collection[str], introspector: Check | None, jwks: Jwks | None,
                    discovery: Discovery) -> Check:
    """The verifier for ``idp.token_format``; ``jwks`` is None when nothing is validated locally."""
    local: Check | None = None
    if jwks is not None:
        local = JwtAccessTokenVerifier(idp, jwks, kept_claims)
    elif idp.token_format == "auto":
        log.info("local JWT validation off: it needs policy.audiences and an issuer (RFC 9068 §4)")
    if local is None and introspector is not None:
        return introspector
    return TokenFormatVerifier(idp.token_format, introspector, local, discovery, idp.jwks_uri)
