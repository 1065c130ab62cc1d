"""Credential headers a client sent: names in the ``response.prefix`` namespace in the check request.

The upstream trusts ``x-credential-*`` because the proxy sets them from the sidecar's answer. A
proxy overwrites the names the sidecar answers with; a copy of any other name in the namespace
(``x-credential-tenant``, or ``x_credential_sub`` and ``x.credential.sub``, which CGI, WSGI and
PHP upstreams read as ``X-Credential-Sub``) passes unless something removes it. Where the check request carries the
client's headers (nginx ``auth_request``, Traefik, Caddy, Envoy gRPC; Envoy HTTP for the names its
``allowed_headers`` lists) the sidecar sees such a copy and, per ``response.forged_headers``:

- ``remove``: allows, and names it in the removal list of the answer
  (``x-envoy-auth-headers-to-remove``, gRPC ``headers_to_remove``) — Envoy and Istio drop it;
- ``deny``: refuses the request (400 ``credential_header_forged``) — for a proxy that can neither
  drop it itself nor read a removal list (nginx without headers-more).

A name matches when, lower-cased with ``_`` and ``.`` read as ``-``, it starts with the prefix.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

# Each check request pays for this scan: one join, one translation and one search in C (about
# 0.7 µs for a dozen headers); the names are only picked out when the search finds one. A line
# feed is never part of a header name.
_FOLD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ_.", b"abcdefghijklmnopqrstuvwxyz--")
_FOLD_TEXT = str.maketrans("_.", "--")


def _fold(name: str) -> str:
    return name.lower().translate(_FOLD_TEXT)


class ForgedHeaders:
    """Finds the credential-namespace names in a check request's header names."""

    __slots__ = ("_marker", "_prefix", "_raw_marker")

    def __init__(self, prefix: str) -> None:
        self._prefix = _fold(prefix)
        self._marker = "\n" + self._prefix
        self._raw_marker = self._marker.encode("ascii")

    def in_raw(self, raw_headers: Iterable[tuple[bytes, bytes]]) -> tuple[str, ...]:
        """The names among aiohttp's ``raw_headers`` (bytes as received)."""
        names = [name for name, _ in raw_headers]
        if self._raw_marker not in (b"\n" + b"\n".join(names)).translate(_FOLD):
            return ()
        return self._pick(name.decode("latin-1") for name in names)

    def in_names(self, names: Collection[str]) -> tuple[str, ...]:
        """The names among ``names`` (gRPC: the keys Envoy sends, already lower-cased)."""
        if self._marker not in _fold("\n" + "\n".join(names)):
            return ()
        return self._pick(names)

    def _pick(self, names: Iterable[str]) -> tuple[str, ...]:
        """The matching names, lower-cased, each once, in the order first seen."""
        found: dict[str, None] = {}
        for name in names:
            if _fold(name).startswith(self._prefix):
                found[name.lower()] = None
        return tuple(found)
