"""What the IdP says about a token, as one frozen value (RFC 7662 §2.2, RFC 9068 §2.2).

Both the introspection answer and the claims of a validated JWT access token become a
:class:`TokenInfo`; everything after that (binding, policy, headers) reads only this value.
Parsing is pure: a wrong type is a :class:`MalformedTokenInfo`, which callers treat as an IdP
failure (fail closed), never as an active token.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

STANDARD_CLAIMS = (
    "active", "scope", "client_id", "username", "token_type", "exp", "iat", "nbf",
    "sub", "aud", "iss", "jti", "cnf",
)


class MalformedTokenInfo(ValueError):
    """The IdP's answer has a claim of the wrong type; the message names the claim."""


@dataclass(frozen=True, slots=True)
class TokenInfo:
    active: bool
    scopes: frozenset[str] = frozenset()
    scope: str | None = None
    client_id: str | None = None
    username: str | None = None
    token_type: str | None = None
    exp: int | None = None
    iat: int | None = None
    nbf: int | None = None
    sub: str | None = None
    aud: tuple[str, ...] = ()
    iss: str | None = None
    jti: str | None = None
    cnf_x5t_s256: str | None = None
    cnf_jkt: str | None = None  # RFC 9449 §6: the DPoP key's RFC 7638 thumbprint
    # Confirmation methods this sidecar cannot verify (RFC 7800 cnf members other than these two):
    # a token bound by them must never pass as unbound.
    cnf_unverifiable: tuple[str, ...] = ()
    # Whether the answer came from introspection (token_type then says what kind of token it is).
    introspected: bool = False
    # token_use (Ory Hydra) or typ (Keycloak) when present, lower-cased: "refresh_token", "refresh", ...
    token_use: str | None = None
    # Only the claims configured for upstream headers are kept (memory per cached token).
    extra: Mapping[str, str] | None = None
    # The configured issuer that vouched for the token (``default``: [idp]; else [issuers.NAME]).
    issuer: str | None = None

    @property
    def bound(self) -> bool:
        return self.cnf_x5t_s256 is not None or self.cnf_jkt is not None

    @property
    def cnf_method(self) -> str | None:
        """How the token is sender-constrained: ``mtls`` (RFC 8705) or ``dpop`` (RFC 9449)."""
        return "mtls" if self.cnf_x5t_s256 is not None else "dpop" if self.cnf_jkt is not None else None


INACTIVE = TokenInfo(active=False)
_MAX_NUMERIC_DATE = 2**53  # the largest integer a float (the clock) holds exactly


def token_info_from_claims(
    claims: object, extra_claims: Collection[str] = (), *, active: bool | None = None
) -> TokenInfo:
    """Build a TokenInfo from an introspection object or JWT claims.

    ``active`` is taken from the payload (RFC 7662 ``active``, REQUIRED) unless given, as for a
    JWT whose signature was verified.
    """
    if not isinstance(claims, Mapping):
        raise MalformedTokenInfo("the answer is not a JSON object")
    introspected = active is None  # an introspection answer, not the claims of a verified JWT
    if active is None:
        value = claims.get("active")
        if not isinstance(value, bool):
            raise MalformedTokenInfo("active: must be a boolean")
        active = value
    if not active:
        return INACTIVE
    scope = _opt_str(claims, "scope")
    cnf = claims.get("cnf")
    return TokenInfo(
        active=True,
        scopes=scope_set(scope),
        scope=scope,
        client_id=_opt_str(claims, "client_id"),
        username=_opt_str(claims, "username"),
        token_type=_opt_str(claims, "token_type"),
        exp=_opt_time(claims, "exp"),
        iat=_opt_time(claims, "iat"),
        nbf=_opt_time(claims, "nbf"),
        sub=_opt_str(claims, "sub"),
        aud=_audience(claims.get("aud")),
        iss=_opt_str(claims, "iss"),
        jti=_opt_str(claims, "jti"),
        cnf_x5t_s256=_thumbprint(cnf),
        cnf_jkt=_member(cnf, "jkt"),
        cnf_unverifiable=_unverifiable(cnf),
        introspected=introspected,
        token_use=_token_use(claims),
        extra=_extra(claims, extra_claims) or None,
    )


def scope_set(scope: str | None) -> frozenset[str]:
    """RFC 6749 §3.3: scope tokens are separated by %x20 only. ``str.split()`` would also split on
    tabs, \x1f, NBSP or EM SPACE, letting a scope ``read\x1fadmin`` satisfy a required ``admin``."""
    return frozenset(s for s in scope.split(" ") if s) if scope else frozenset()


def _opt_str(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedTokenInfo(f"{name}: must be a string")
    return value


def _opt_time(claims: Mapping[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedTokenInfo(f"{name}: must be a NumericDate")
    # JSON allows NaN, Infinity and 400-digit integers; none is a time the clock can compare.
    if not -_MAX_NUMERIC_DATE <= value <= _MAX_NUMERIC_DATE:
        raise MalformedTokenInfo(f"{name}: NumericDate out of range")
    return int(value)


def _audience(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise MalformedTokenInfo("aud: must be a string or an array of strings")


def _thumbprint(cnf: object) -> str | None:
    """RFC 8705 §3.1: ``cnf: {"x5t#S256": base64url(SHA-256(DER))}``."""
    return _member(cnf, "x5t#S256")


def _member(cnf: object, name: str) -> str | None:
    """A thumbprint member of ``cnf`` (``x5t#S256``, RFC 9449 §6.1 ``jkt``), or None."""
    if cnf is None:
        return None
    if not isinstance(cnf, Mapping):
        raise MalformedTokenInfo("cnf: must be an object")
    value = cnf.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise MalformedTokenInfo(f"cnf.{name}: must be a non-empty string")
    return value


MAX_CNF_MEMBERS = 8
_VERIFIED = frozenset({"x5t#S256", "jkt"})


def _unverifiable(cnf: object) -> tuple[str, ...]:
    """The cnf members other than ``x5t#S256`` and ``jkt`` (e.g. ``x5t``, ``jwk``), sorted."""
    if not isinstance(cnf, Mapping):
        return ()
    others = sorted(str(k)[:32] for k in cnf if k not in _VERIFIED)
    return tuple(others[:MAX_CNF_MEMBERS])


def _token_use(claims: Mapping[str, Any]) -> str | None:
    for name in ("token_use", "typ"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value[:32].lower()
    return None


def _extra(claims: Mapping[str, Any], names: Collection[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in names:
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            out[name] = value
        elif isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
            out[name] = " ".join(str(v) for v in value)
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, int | float):
            out[name] = str(value)
        else:
            out[name] = json.dumps(value, separators=(",", ":"), sort_keys=True)
    return out
