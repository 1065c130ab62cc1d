"""Stage 5: the upstream headers of an allow, sanitized ``x-credential-*`` values built once per
token when it enters the cache (a cache hit allocates nothing for them).

Every configured header is present on allow, empty when the claim is absent, so a copy sent by
the client can never reach the upstream through Envoy (which keeps client headers the service
does not return). How a denial is rendered is the fronts' (sidecar/fronts/render.py).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence

from multidict import istr

from sidecar.config import DPOP_HEADERS, STANDARD_HEADERS, BindingMode, ResponseConfig
from sidecar.core.token_info import TokenInfo
from sidecar.support.memo import Memo, text_size

# Envoy's HTTP ext_authz drops the request headers named here (comma-separated) on a 200.
REMOVE_HEADER = "x-envoy-auth-headers-to-remove"

# C0 controls (CR, LF, NUL, ...), DEL and C1 controls never reach a header value, nor lone
# surrogates (JSON "\\ud800" decodes to one; it cannot be encoded and would fail the response).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

def sanitize(value: str, max_length: int) -> str:
    """Strip control characters (no header splitting) and bound the length."""
    return _CONTROL.sub("", value)[:max_length].strip(" \t")


class CredentialHeaders(Mapping[str, str]):
    """The upstream headers of one cached token, read-only.

    The names belong to the configuration: :class:`HeaderBuilder` makes one subclass per
    configuration whose slots hold the values, so a token pays for one object of N slots (120
    bytes for 11 headers) instead of a ``dict`` (464 bytes) or a dict-like wrapper plus a tuple
    (192 bytes). Memory per cached token is the point (issue 6: <= 1 KiB at 100k tokens).
    """

    __slots__ = ()
    _names: tuple[str, ...] = ()
    _header_names: tuple[istr, ...] = ()  # the same names as multidict.istr (see pairs)
    _values: Callable[[CredentialHeaders], tuple[str, ...]]

    def __getitem__(self, name: str) -> str:
        for known, value in zip(self._names, self._values(self), strict=True):
            if known == name:
                return value
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def pairs(self) -> Iterator[tuple[str, str]]:
        """(name, value) pairs: what ``web.Response(headers=...)`` reads fastest from this.

        The names are ``multidict.istr`` (a ``str`` that compares and prints as itself): the
        CIMultiDict that aiohttp builds from them takes their precomputed case-folded identity
        instead of folding each name per response (about 4 µs of server CPU per cache hit, measured
        with wrk: README, "Where the CPU of a cache hit goes").
        """
        return zip(self._header_names, self._values(self), strict=True)


def _headers_class(names: tuple[str, ...]) -> Callable[[Sequence[str]], CredentialHeaders]:
    """A CredentialHeaders subclass with one slot per header, and its constructor."""
    slots = tuple(f"_v{i}" for i in range(len(names)))
    # 11 standard headers at least: attrgetter of several names returns a tuple.
    cls = type("CredentialHeaders", (CredentialHeaders,), {
        "__slots__": slots, "_names": names, "_header_names": tuple(istr(n) for n in names),
        "_values": staticmethod(operator.attrgetter(*slots)),
    })

    def make(values: Sequence[str]) -> CredentialHeaders:
        headers: CredentialHeaders = cls()
        for slot, value in zip(slots, values, strict=True):
            object.__setattr__(headers, slot, value)
        return headers

    return make


class HeaderBuilder:
    """Builds the upstream headers of one token from the configured prefix and claim map."""

    def __init__(self, config: ResponseConfig, claims: Sequence[tuple[str, str]] | None = None,
                 own: Collection[tuple[str, str]] | None = None, *, binding: BindingMode = "strict",
                 dpop: bool = False, identity: str | None = None) -> None:
        """``claims``: every (claim, header suffix) any policy sends (default ``response.claims``);
        ``own``: those this builder fills, the others stay empty (default: all of them);
        ``identity``: the identity token's header (``identity.header``) when any policy sends one,
        empty until :meth:`with_identity` fills it."""
        # With DPoP (dpop.enabled) two more headers; cnf-method names the method the sidecar
        # verified, so under binding off a certificate is not named. Without DPoP no token pays
        # for them (memory per cached token).
        standard = STANDARD_HEADERS + (DPOP_HEADERS if dpop else ())
        self._unverified = frozenset({"mtls"}) if binding == "off" else frozenset()
        self._method_at = [attr for attr, _ in standard].index("cnf_method") if dpop else -1
        prefix = config.prefix.lower()
        claims = tuple(config.claims.items()) if claims is None else tuple(claims)
        self._standard = tuple((attr, prefix + suffix) for attr, suffix in standard)
        self._extra = tuple((claim if own is None or (claim, suffix) in own else "", prefix + suffix.lower())
                            for claim, suffix in claims)
        self._max = config.max_value_length
        self.removals = tuple(h.lower() for h in config.remove_upstream_headers)
        self._remove = ", ".join(self.removals)
        # One string per audience list (memory per token); audiences come from tokens: bytes-bounded.
        self._joined: Memo[tuple[str, ...], str] = Memo(4096, max_bytes=1 << 20,
                                                        size_of=lambda key, value: text_size(key) + text_size(value))
        self._identity = () if identity is None else (identity.lower(),)
        self._identity_at = len(self._standard) + len(self._extra)  # its slot, when there is one
        self._make = _headers_class(self.names + ((REMOVE_HEADER,) if self._remove else ()))

    @property
    def names(self) -> tuple[str, ...]:
        """Every header an allow carries (the proxy config must set or clear each)."""
        return tuple(h for _, h in self._standard) + tuple(h for _, h in self._extra) + self._identity

    def with_identity(self, headers: CredentialHeaders, token: str) -> CredentialHeaders:
        """``headers`` with the identity token (core/identity.py) in its slot: a new object, since
        the old one may be in use (a gRPC answer memoized by it)."""
        values = list(headers._values(headers))
        values[self._identity_at] = token
        return self._make(values)

    def build(self, info: TokenInfo) -> CredentialHeaders:
        values = [self._text(getattr(info, attr)) for attr, _ in self._standard]
        if self._method_at >= 0 and info.cnf_method in self._unverified:
            values[self._method_at] = ""
        extra = info.extra or {}
        values.extend(self._text(extra.get(claim) if claim else None) for claim, _ in self._extra)
        if self._identity:
            values.append("")  # signed at the first allow under a policy that sends it
        if self._remove:
            values.append(self._remove)
        return self._make(values)

    def _text(self, value: object) -> str:
        if value is None:
            return ""
        if isinstance(value, tuple):
            joined = self._joined.get(value)
            if joined is None:
                joined = self._joined.put(value, sanitize(" ".join(value), self._max))
            return joined
        return sanitize(str(value), self._max)
