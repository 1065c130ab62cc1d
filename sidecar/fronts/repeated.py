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

from collections.abc import Sequence

# "host": aiohttp's parser itself refuses a second Host (RFC 9112 §3.2); listed should that change.
DESCRIBING = ("host", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-method", "x-forwarded-uri",
              "x-original-method", "x-original-uri")


class RepeatedHeaders:
    """Finds the describing headers a check request carries more than once."""

    __slots__ = ("_names",)

    def __init__(self, *extra: str) -> None:
        """``extra``: the configured describing headers (the policy header, the source header)."""
        names = dict.fromkeys(n.lower() for n in (*DESCRIBING, *extra))
        self._names = tuple((name, name.encode("ascii")) for name in names)

    def in_raw(self, raw_headers: Sequence[tuple[bytes, bytes]]) -> Sequence[str]:
        """The describing names among aiohttp's ``raw_headers`` that occur more than once (any case).

        Each check request pays for one set of its lower-cased names (about 0.4 µs for a dozen);
        only a request with some name twice, describing or not, pays for the names' counts."""
        if len({name.lower() for name, _ in raw_headers}) == len(raw_headers):
            return ()
        every = [name.lower() for name, _ in raw_headers]
        return [name for name, key in self._names if every.count(key) > 1]
