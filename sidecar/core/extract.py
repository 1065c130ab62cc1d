"""Stage 1: the access token (RFC 6750 §2.1, RFC 9449 §7.1) and whether the peer may vouch for a
certificate.

RFC 6750 §2.1: ``credentials = "Bearer" 1*SP b64token``; RFC 9449 §7.1: ``DPoP`` with the same
token68 shape, accepted only with ``dpop.enabled``. Schemes are case-insensitive (RFC 9110
§11.1). Exactly one Authorization field with exactly one credential is accepted.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

from sidecar.core.errors import InvalidRequest, MissingToken
from sidecar.support.memo import Memo

MAX_TOKEN_LENGTH = 16384
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def bearer_token(authorization: Sequence[str]) -> str:
    """The token from the Authorization field values; raises a denial otherwise."""
    return access_token(authorization)[0]


def access_token(authorization: Sequence[str], *, dpop: bool = False) -> tuple[str, bool]:
    """(the token, whether it came with the ``DPoP`` scheme); ``dpop``: that scheme is accepted."""
    if not authorization:
        raise MissingToken("token_missing", "no Authorization header")
    if len(authorization) > 1:
        raise InvalidRequest("token_duplicated", "more than one Authorization header")
    value = authorization[0]
    scheme, _, credentials = value.strip(" \t").partition(" ")
    scheme = scheme.lower()
    if scheme != "bearer" and not (dpop and scheme == "dpop"):
        # RFC 6750 §3.1: a request without Bearer credentials gets no error code.
        raise MissingToken("token_missing", "Authorization scheme is not Bearer")
    token = credentials.strip(" ")
    if not token:
        raise InvalidRequest("token_malformed", "Bearer without a token")
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidRequest("token_malformed", f"token longer than {MAX_TOKEN_LENGTH}")
    if _B64TOKEN.fullmatch(token) is None:
        raise InvalidRequest("token_malformed", "token is not a b64token or holds several values")
    return token, scheme == "dpop"


class TrustedProxies:
    """Which peers may send a certificate header; answers are memoized per address string."""

    __slots__ = ("_memo", "_networks")

    def __init__(self, cidrs: Iterable[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
        self._memo: Memo[str | None, bool] = Memo(4096)  # peer address strings: short, bounded by count

    def __contains__(self, peer: str | None) -> bool:
        known = self._memo.get(peer)
        if known is None:
            known = self._memo.put(peer, self._check(peer))
        return known

    def _check(self, peer: str | None) -> bool:
        if not peer:
            return False
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)
