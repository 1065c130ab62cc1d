"""A :class:`TokenInfo`, its expiry and the time its IdP call began, as the JSON sealed into
Redis, and back.

Only what the sidecar keeps (the TokenInfo fields) travels, with ``u`` (the wall-clock time until
which the answer may be reused) and ``b`` (when the IdP call that gave it began: a replica refuses
an answer begun before a purge it remembers, core/purges.py). Reading is strict: a field of the
wrong type, a missing one or an unknown one makes the value :class:`~sidecar.fleet.seal.Tampered`
(never a guess), even though a value that opened was sealed by a replica of the fleet.
"""

from __future__ import annotations

import json
import math
from typing import Any

from sidecar.core.token_info import INACTIVE, TokenInfo, scope_set
from sidecar.fleet.seal import Tampered

_STR = ("scope", "client_id", "username", "token_type", "sub", "iss", "jti", "cnf_x5t_s256", "cnf_jkt", "token_use",
        "issuer")
_INT = ("exp", "iat", "nbf")
_TUPLE = ("aud", "cnf_unverifiable")
_FIELDS = frozenset((*_STR, *_INT, *_TUPLE, "active", "introspected", "extra"))
DERIVED = frozenset({"scopes"})  # rebuilt from scope on reading
# Every TokenInfo field travels (tests/fleet and tests/unit check it): a field left out here would
# silently drop, e.g., a DPoP binding (cnf_jkt) from every answer a replica reads from Redis.
MAX_VALUE_BYTES = 64 * 1024


def encode(info: TokenInfo, until: float, began: float) -> bytes:
    claims: dict[str, Any] = {"active": info.active}
    if info.active:
        claims["introspected"] = info.introspected
        for name in _STR + _INT:
            value = getattr(info, name)
            if value is not None:
                claims[name] = value
        for name in _TUPLE:
            value = getattr(info, name)
            if value:
                claims[name] = list(value)
        if info.extra:
            claims["extra"] = dict(info.extra)
    return json.dumps({"i": claims, "u": until, "b": began}, separators=(",", ":")).encode()


def decode(data: bytes) -> tuple[TokenInfo, float, float]:
    """The TokenInfo, the wall-clock time until which it may be reused, and when its IdP call began."""
    if len(data) > MAX_VALUE_BYTES:
        raise Tampered("value too large")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise Tampered("not JSON") from None
    if not isinstance(doc, dict) or set(doc) != {"i", "u", "b"}:
        raise Tampered("not a shared answer")
    until, began, claims = _time(doc, "u"), _time(doc, "b"), doc["i"]
    if not isinstance(claims, dict) or not set(claims) <= _FIELDS or not isinstance(claims.get("active"), bool):
        raise Tampered("i: not a token answer")
    if not claims["active"]:
        return INACTIVE, until, began
    return _active(claims), until, began


def _time(doc: dict[str, Any], name: str) -> float:
    value = doc[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Tampered(f"{name}: not a time")
    return float(value)


def _active(claims: dict[str, Any]) -> TokenInfo:
    values: dict[str, Any] = {}
    for name in _STR:
        value = claims.get(name)
        if value is not None and not isinstance(value, str):
            raise Tampered(f"{name}: not a string")
        values[name] = value
    for name in _INT:
        value = claims.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise Tampered(f"{name}: not an integer")
        values[name] = value
    for name in _TUPLE:
        value = claims.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise Tampered(f"{name}: not a list of strings")
        values[name] = tuple(value)
    extra = claims.get("extra")
    if extra is not None and (not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values())):
        raise Tampered("extra: not a table of strings")
    introspected = claims.get("introspected", False)
    if not isinstance(introspected, bool):
        raise Tampered("introspected: not a boolean")
    return TokenInfo(active=True, scopes=scope_set(values["scope"]), introspected=introspected,
                     extra=extra or None, **values)
