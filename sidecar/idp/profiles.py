"""IdP profiles: each IdP's documented JWT access token shape, selected per issuer by ``profile``.

RFC 9068 (``rfc9068``, the default) says how a JWT access token looks: header ``typ`` ``at+jwt``,
the scopes in ``scope`` (a space-separated string), the client in ``client_id``. The IdPs our users
run shape theirs otherwise:

========== ============================== ========================================= ====================
profile    ``typ`` accepted (header)      scopes                                    client
========== ============================== ========================================= ====================
rfc9068    ``at+jwt``                     ``scope`` (string)                        ``client_id``
keycloak   ``at+jwt``, ``JWT``            ``scope`` (string)                        ``azp``, ``client_id``
entra      ``at+jwt``, ``JWT``            ``scp`` (string), else ``roles`` (array)  ``azp`` (v2), ``appid`` (v1)
okta       ``at+jwt``, none               ``scp`` (array)                           ``cid``
auth0      ``at+jwt``, ``JWT``            ``scope`` (string) and ``permissions``     ``azp``, ``client_id``
========== ============================== ========================================= ====================

**The rule that keeps an ID token out.** A token that declares ``at+jwt`` says it is an access
token (RFC 9068 §2.1). One that does not (``typ: JWT``, or none) is taken as an access token only
if it looks like nothing else the IdP signs with the same keys, above all its ID tokens, whose
``aud`` is the client they were issued to (OpenID Connect Core §2):

1. it names its client (the profile's client claim): an access token always says which client
   holds it;
2. that client is not one of its audiences: an access token's ``aud`` is the API, never the client
   itself, while an ID token's ``aud`` is the client (so register the API as an application of its
   own; an API that is its own client must have its IdP issue ``at+jwt``);
3. it carries none of the ID token's hashes (``at_hash``, ``c_hash``, ``s_hash``);
4. Keycloak: its ``typ`` claim is ``Bearer`` (Keycloak's ID tokens say ``ID``, its refresh tokens
   ``Refresh``).

Whatever the profile, the policy then checks ``aud`` against its ``audiences`` (RFC 9068 §4).
Each failure is ``jwt_not_access_token``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.core.errors import InvalidToken

AT_JWT = frozenset({"at+jwt", "application/at+jwt"})
ID_TOKEN_HASHES = ("at_hash", "c_hash", "s_hash")


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    types: frozenset[str | None]  # accepted header typ values, lower case; None: no typ at all
    scopes: tuple[str, ...]  # claims whose scopes are united (a string or an array of strings)
    client: tuple[str, ...]  # claims naming the client, the first present wins
    fallback_scopes: tuple[str, ...] = ()  # used when no claim of ``scopes`` is present
    bearer_typ: bool = False  # Keycloak: the payload typ claim must be Bearer

    def accepts_type(self, typ: object) -> bool:
        if typ is None:
            return None in self.types
        return isinstance(typ, str) and typ.lower() in self.types

    def claims(self, typ: object, claims: dict[str, Any]) -> dict[str, Any]:
        """The claims in RFC 9068 names (``scope``, ``client_id``); a relaxed ``typ`` checked first."""
        if not (isinstance(typ, str) and typ.lower() in AT_JWT):
            self._not_an_id_token(claims)
        if self.name == "rfc9068":
            return claims
        out = dict(claims)
        scopes = _united(claims, self.scopes) if any(n in claims for n in self.scopes) \
            else _united(claims, self.fallback_scopes)
        if scopes is not None:
            out["scope"] = scopes
        client = self._client(claims)
        if client is not None and not isinstance(claims.get("client_id"), str):
            out["client_id"] = client
        return out

    def _client(self, claims: Mapping[str, Any]) -> str | None:
        for name in self.client:
            value = claims.get(name)
            if isinstance(value, str) and value:
                return value
        return None

    def _not_an_id_token(self, claims: Mapping[str, Any]) -> None:
        client = self._client(claims)
        if client is None:
            raise InvalidToken("jwt_not_access_token", f"typ is not at+jwt and no client claim "
                               f"({', '.join(self.client)}): an ID token's shape")
        aud = claims.get("aud")
        if client == aud or (isinstance(aud, list) and client in aud):
            raise InvalidToken("jwt_not_access_token", "typ is not at+jwt and aud holds the client itself: "
                               "an ID token's shape")
        found = next((h for h in ID_TOKEN_HASHES if h in claims), None)
        if found is not None:
            raise InvalidToken("jwt_not_access_token", f"typ is not at+jwt and {found} is present: an ID token")
        if self.bearer_typ and str(claims.get("typ", "")).lower() != "bearer":
            raise InvalidToken("jwt_not_access_token", f"Keycloak typ claim {str(claims.get('typ'))[:20]!r} is "
                               "not Bearer")


def _united(claims: Mapping[str, Any], names: tuple[str, ...]) -> str | None:
    """The scopes of every claim in ``names``, space-separated; None when none is present."""
    found: dict[str, None] = {}
    present = False
    for name in names:
        value = claims.get(name)
        if value is None:
            continue
        present = True
        if isinstance(value, str):
            items = [s for s in value.split(" ") if s]
        elif isinstance(value, list) and all(isinstance(v, str) and v and " " not in v for v in value):
            items = value
        else:
            raise InvalidToken("jwt_malformed", f"claims: {name}: must be a string or an array of scope strings")
        found.update(dict.fromkeys(items))
    return " ".join(found) if present else None


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("rfc9068", frozenset(AT_JWT), ("scope",), ("client_id",)),
    Profile("keycloak", frozenset({*AT_JWT, "jwt"}), ("scope",), ("azp", "client_id"), bearer_typ=True),
    Profile("entra", frozenset({*AT_JWT, "jwt"}), ("scp",), ("azp", "appid"), fallback_scopes=("roles",)),
    Profile("okta", frozenset({*AT_JWT, None}), ("scp",), ("cid",)),
    Profile("auth0", frozenset({*AT_JWT, "jwt"}), ("scope", "permissions"), ("azp", "client_id")),
)}
