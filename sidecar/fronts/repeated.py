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

from multidict import CIMultiDict, CIMultiDictProxy

# "host": aiohttp's parser itself refuses a second Host (RFC 9112 §3.2); listed should that change.
DESCRIBING = ("host", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-method", "x-forwarded-uri",
              "x-original-method", "x-original-uri")
# multidict 7.1+: keys() yields each name once (case-insensitively), so ``len(headers.keys())``
# below ``len(headers)`` says some name came twice. With an older multidict every request takes
# the counting path: slower, never wrong.
_DISTINCT_KEYS = len(CIMultiDict([("a", ""), ("A", "")]).keys()) == 1


class RepeatedHeaders:
    """Finds the describing headers a check request carries more than once."""

    __slots__ = ("_names",)

    def __init__(self, *extra: str) -> None:
        """``extra``: the configured describing headers (the policy header, the source header)."""
        self._names = tuple(dict.fromkeys(n.lower() for n in (*DESCRIBING, *extra)))

    def in_headers(self, headers: CIMultiDictProxy[str]) -> Sequence[str]:
        """The describing names (any case) that occur more than once among a check request's headers.

        A request whose names are all distinct (nearly every one) costs two lengths compared; only
        a request with some name twice, describing or not, pays for counting the describing ones."""
        if _DISTINCT_KEYS and len(headers.keys()) == len(headers):
            return ()
        return [name for name in self._names if len(headers.getall(name, ())) > 1]
