"""Headers that describe the request, sent more than once in a check request.

A proxy sets one copy of each header that tells the sidecar about the original request: its URI
and method (nginx ``X-Original-*``; Traefik, Caddy, HAProxy ``X-Forwarded-Uri``/``-Method``), its
host and scheme (``Host``, ``X-Forwarded-Host``, ``X-Forwarded-Proto``), the policy the proxy names
(``routing.policy_header``) and the client's address (``admission.source_header``). A second copy
comes from the client, through a proxy that passes on what it does not set: which copy a reader
takes (aiohttp the first, others the last) must never decide a policy or a DPoP ``htu``. The front
names every such header that came more than once; the core refuses the request
(``request_header_duplicated``, sidecar/core/target.py), as it refuses duplicated certificate and
``Authorization`` headers.
"""

from __future__ import annotations

from collections.abc import Iterable

# "host": aiohttp's parser itself refuses a second Host (RFC 9112 §3.2); listed should that change.
DESCRIBING = ("host", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-method", "x-forwarded-uri",
              "x-original-method", "x-original-uri")


class RepeatedHeaders:
    """Finds the describing headers a check request carries more than once."""

    __slots__ = ("_markers",)

    def __init__(self, *extra: str) -> None:
        """``extra``: the configured describing headers (the policy header, the source header)."""
        names = dict.fromkeys(n.lower() for n in (*DESCRIBING, *extra))
        # Each name framed as "\n<name>\r" in the joined names: one count() in C per describing name.
        self._markers = tuple((name, b"\n" + name.encode("ascii") + b"\r") for name in names)

    def in_raw(self, raw_headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
        """The describing names among aiohttp's ``raw_headers`` that occur more than once (any case)."""
        joined = (b"\n" + b"\r\n".join([name for name, _ in raw_headers]) + b"\r").lower()
        return [name for name, marker in self._markers if joined.count(marker) > 1]
