"""Stage 0: the request as the upstream will receive it, judged before the token is looked up.

What the proxy says about the original request (its scheme, host, path and the headers that carry
them) decides the policy and a DPoP proof's ``htu``; it is held to the same standard as the
certificate (docs/routes.md):

- **each describing header once**: a check request that carries a header describing the request
  (original URI and method, host, scheme, policy name, client address) more than once is refused,
  as duplicated certificate and ``Authorization`` headers are (``request_header_duplicated``);
- **the origin is configuration**: with ``routing.origins``, the request's scheme and host must be
  one of them (``origin_not_allowed``), vouched for by a trusted proxy. A host without a port (what
  nginx's ``$host`` gives) may be any declared origin of that scheme and name; a DPoP ``htu`` must
  then name one of those origins (:meth:`RequestTarget.uris`);
- **one path, one meaning**: where the path decides the policy (named policies or ``[[routes]]``
  are configured), the path a trusted proxy describes must have one normalized form, whichever
  way the policy is chosen (the proxy's name or a rule): :func:`normalize_path` refuses what
  proxies and servers read differently (``path_invalid``).

Every answer is memoized (per scheme and host, per path): a cache hit pays dictionary lookups.

The normalized path is what servers act on: the query cut, percent-decoding once, dot
segments resolved (RFC 3986 §5.2.4), empty segments and the trailing slash removed, lower case
when ``routing.case_sensitive`` is false. Refused: a ``;`` (Tomcat, Spring and Jetty drop path
parameters, nginx and Envoy keep them: ``/api/x/..;/../admin``), a ``#`` (a target carries no
fragment; nginx ends the path there and passes the rest upstream), an encoded ``/``, ``\\``, ``;`` or
``%`` (double encoding), a backslash, ``..`` above the root, control characters, non-ASCII bytes in
the target, a decoded segment that NFKC would change (full-width dots, ``\u2025``), a segment ending
in a dot or a space (``/admin.`` is ``/admin`` on Windows servers).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from urllib.parse import unquote

from sidecar.config import RoutingConfig
from sidecar.core.errors import Denial, InvalidRequest, RouteDenied
from sidecar.core.extract import TrustedProxies
from sidecar.core.htu import target
from sidecar.core.request import CheckRequest
from sidecar.support.memo import Memo, text_size

MAX_PATH = 8192
_AMBIGUOUS = frozenset("/\\;%")
_ORIGIN = re.compile(r"(https?)://([^/:\[\]]+|\[[0-9a-f:.]+\])(?::([0-9]+))?/?")
_HOST = re.compile(r"([a-z0-9_](?:[a-z0-9_.-]{0,252})|\[[0-9a-f:.]+\])(?::([0-9]{1,5}))?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class UnsafePath(ValueError):
    """A request target with no single normalized form: never matched, denied."""


def normalize_path(target: str, *, case_sensitive: bool = True) -> str:
    """The path an upstream acts on; raises :class:`UnsafePath`."""
    path = target.partition("?")[0]
    if not path.startswith("/") or len(path) > MAX_PATH or "#" in target:
        raise UnsafePath("not an origin-form target (a # too: nginx cuts the path there, others read on)")
    if not path.isascii() or "\\" in path or not path.isprintable():
        raise UnsafePath("raw non-ASCII, control characters or a backslash")
    if ";" in path:
        raise UnsafePath("a path parameter (;): Java servers drop it, nginx and Envoy keep it")
    segments: list[str] = []
    for segment in path.split("/")[1:]:
        if "%" in segment:
            try:
                segment = unquote(segment, errors="strict")
            except UnicodeDecodeError:
                raise UnsafePath("percent-encoding that is not UTF-8") from None
            if not _AMBIGUOUS.isdisjoint(segment):
                raise UnsafePath("an encoded separator or a double encoding")
            if not segment.isprintable() or unicodedata.normalize("NFKC", segment) != segment:
                raise UnsafePath("encoded control characters or a compatibility form")
            if not case_sensitive and not segment.isascii():
                raise UnsafePath("non-ASCII with case-insensitive matching")
        if segment in ("", "."):
            continue
        if (segment != ".." and segment[-1] in ". ") or segment[0] == " ":
            raise UnsafePath("a segment ending in a dot or a space (Windows servers drop them)")
        if segment == "..":  # RFC 3986 §5.2.4 remove_dot_segments
            if not segments:
                raise UnsafePath("a dot segment above the root")
            segments.pop()
            continue
        segments.append(segment)
    normal = "/" + "/".join(segments)
    return normal if case_sensitive else normal.lower()


def split_host(value: str | None) -> tuple[str, int | None] | None:
    """A ``Host`` value's name (lower case, without a final dot) and port; None when it is not one."""
    match = _HOST.fullmatch(value.lower() if value else "")
    if match is None:
        return None
    port = match.group(2)
    return match.group(1).rstrip("."), None if port is None else int(port)


def plain_host(value: str | None) -> str | None:
    """The name of a ``Host`` value every server reads alike, or None: refused are a final dot
    (nginx drops it, Envoy and Go keep it), an empty or zero-padded port, and whatever is no host
    (a comma list: HAProxy's ``req.hdr`` reads its last element, the upstream gets the whole)."""
    split = split_host(value)
    if split is None or value is None:
        return None
    name, port = split
    return name if value.lower() == (name if port is None else f"{name}:{port}") else None


class Origin:
    """A declared origin: ``scheme://name[:port]`` as a DPoP ``htu`` prefix, and its parts."""

    __slots__ = ("name", "port", "scheme", "text")

    def __init__(self, value: str) -> None:
        match = _ORIGIN.fullmatch(value)
        if match is None:  # config/checks.py's origins check let it through: a schema bug
            raise ValueError(f"not an origin: {value!r}")
        self.scheme, self.name = match.group(1), match.group(2)
        default = _DEFAULT_PORTS[self.scheme]
        self.port = int(match.group(3) or default)
        self.text = f"{self.scheme}://{self.name}" + ("" if self.port == default else f":{self.port}")


class RequestTarget:
    """Stage 0 of one configuration (see the module doc); :meth:`check` on every request."""

    __slots__ = ("_by_scheme", "_case_sensitive", "_choosing", "_no_path", "_origins", "_paths", "_trusted",
                 "_untrusted")

    def __init__(self, routing: RoutingConfig, trusted: TrustedProxies, *, choosing: bool) -> None:
        """``choosing``: the path decides the policy (named policies or rules are configured)."""
        self._trusted = trusted
        self._choosing = choosing
        self._case_sensitive = routing.case_sensitive
        self._origins = tuple(Origin(o) for o in routing.origins)
        # Per scheme, each host value a trusted proxy sent: its declared origins (as htu prefixes), or why not.
        self._by_scheme: dict[str | None, Memo[str | None, tuple[str, ...] | Denial]] = {
            scheme: Memo(4096, max_bytes=1 << 20, size_of=lambda key, _: text_size(key) + 128)
            for scheme in {o.scheme for o in self._origins}}
        self._paths: Memo[str, Denial | bool] = Memo(routing.memo_entries, max_bytes=1 << 22,
                                                     size_of=lambda key, _: text_size(key))  # True: safe
        self._untrusted = RouteDenied("origin_not_allowed", "routing.origins: no trusted proxy described the request")
        self._no_path = InvalidRequest("path_invalid", "the policy depends on the path and no trusted proxy sent it")

    def check(self, request: CheckRequest) -> Denial | None:
        """Why the request as described cannot be judged safely, or None."""
        if request.repeated:
            return InvalidRequest("request_header_duplicated",
                                  f"sent more than once: {', '.join(request.repeated)}"[:256])
        if not self._origins and not self._choosing:
            return None  # nothing depends on the description: the peer need not even be looked up
        trusted = request.peer in self._trusted
        if self._origins:
            found = self._origin(request) if trusted else self._untrusted
            if isinstance(found, Denial):
                return found
        if self._choosing and trusted:
            path = request.path
            if path is None:
                return self._no_path
            judged = self._paths.get(path)
            if judged is None:
                judged = self._paths.put(path, self._judge(path))
            return judged if isinstance(judged, Denial) else None
        return None

    def uris(self, request: CheckRequest) -> Sequence[str]:
        """The request's target URIs, one of which a DPoP ``htu`` must be (RFC 9449 §4.3 step 9):
        with ``routing.origins``, each declared origin the request's scheme and host may be, with
        its path; else the scheme, host and path the proxy sent. Empty when they are incomplete;
        for a trusted proxy's description only (the caller checks)."""
        path = request.path
        if not path or not path.startswith("/") or "#" in path:  # no target: nginx and the upstream differ
            return ()
        if not self._origins:
            uri = target(request.scheme, request.host, path)
            return () if uri is None else (uri,)
        found = self._origin(request)
        return () if isinstance(found, Denial) else tuple(origin + path for origin in found)

    def _origin(self, request: CheckRequest) -> tuple[str, ...] | Denial:
        hosts = self._by_scheme.get(request.scheme)
        if hosts is None:
            return RouteDenied("origin_not_allowed", f"routing.origins: none of scheme {str(request.scheme)[:8]!r}")
        host = request.host
        found = hosts.get(host)
        if found is None:
            found = hosts.put(host, self._resolve(request.scheme, host))
        return found

    def _resolve(self, scheme: str | None, host: str | None) -> tuple[str, ...] | Denial:
        split = split_host(host)
        if split is None:
            return RouteDenied("origin_not_allowed", f"routing.origins: not a host: {str(host)[:64]!r}")
        name, port = split
        found = tuple(o.text for o in self._origins if o.scheme == scheme and o.name == name
                      and (port is None or o.port == port))
        return found or RouteDenied("origin_not_allowed", f"routing.origins: {scheme}://{str(host)[:64]} is not one")

    def _judge(self, path: str) -> Denial | bool:
        try:
            normalize_path(path, case_sensitive=self._case_sensitive)
        except UnsafePath as exc:
            return InvalidRequest("path_invalid", f"the original path cannot be normalized safely: {exc}")
        return True
