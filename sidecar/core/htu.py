"""The DPoP ``htu`` comparison (RFC 9449 §4.3 check 9): the request's target URI without query and
fragment, compared after RFC 3986 §6.2.2 syntax-based and §6.2.3 scheme-based normalization.

Normalized: scheme and host lower-cased; ``%xx`` escapes upper-cased and those of unreserved
characters decoded (§6.2.2.1-2); dot segments removed (§5.2.4); the default port (80/443) and an
empty port dropped, an empty path made ``/`` (§6.2.3). Only ``http`` and ``https`` URIs with a
host and no userinfo are targets; anything else normalizes to None and never matches.
"""

from __future__ import annotations

import re

from sidecar.support.memo import Memo, text_size

MAX_URI = 4096
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HOST = re.compile(r"\[[0-9A-Fa-f:.]+\]|[^\s/?#@\[\]:]+")
_PORT = re.compile(r"[0-9]{0,5}")
_URI = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^?#]*)")


def _escape(match: re.Match[str]) -> str:
    byte = int(match.group(1), 16)
    return chr(byte) if byte in _UNRESERVED else "%" + match.group(1).upper()


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4."""
    out: list[str] = []
    for segment in path.split("/")[1:] if path.startswith("/") else path.split("/"):
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    if path.rsplit("/", 1)[-1] in (".", ".."):
        out.append("")  # "/a/b/.." is "/a/"
    return "/" + "/".join(out)


def normalize(uri: str) -> str | None:
    """``scheme://host[:port]/path`` normalized, query and fragment dropped; None if not a target."""
    if len(uri) > MAX_URI or not uri.isascii() or not uri.isprintable():
        return None
    match = _URI.match(uri)
    if match is None:
        return None
    scheme, authority, path = match.group(1).lower(), match.group(2), match.group(3)
    if scheme not in _DEFAULT_PORTS or "@" in authority:
        return None
    host, port = _split_authority(authority)
    if host is None:
        return None
    if port and port != _DEFAULT_PORTS[scheme]:
        host = f"{host}:{int(port)}"
    path = _ESCAPE.sub(_escape, path)
    return f"{scheme}://{host}{remove_dot_segments(path) if path else '/'}"


def _split_authority(authority: str) -> tuple[str | None, str]:
    if authority.startswith("["):
        host, _, rest = authority.partition("]")
        host += "]"
        port = rest[1:] if rest.startswith(":") else None if rest else ""
    else:
        host, _, port = authority.partition(":")
    if port is None or _HOST.fullmatch(host) is None or _PORT.fullmatch(port) is None:
        return None, ""
    if port and int(port) > 65535:
        return None, ""
    return _ESCAPE.sub(_escape, host).lower(), port


def target(scheme: str | None, host: str | None, path: str | None) -> str | None:
    """The request's target URI from the original request the proxy describes (None if partial)."""
    if not scheme or not host or not path or not path.startswith("/"):
        return None
    return f"{scheme}://{host}{path}"


class Normalizer:
    """:func:`normalize` with a bounded memo: the same few URIs come back on every request."""

    __slots__ = ("_memo",)

    def __init__(self, max_entries: int = 4096, max_bytes: int = 2 * 1024 * 1024) -> None:
        self._memo: Memo[str, str] = Memo(max_entries, max_bytes=max_bytes,
                                          size_of=lambda key, value: text_size(key) + text_size(value))

    def __call__(self, uri: str) -> str | None:
        known = self._memo.get(uri)
        if known is not None:
            return known or None
        return self._memo.put(uri, normalize(uri) or "") or None
