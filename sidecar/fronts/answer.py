"""The one edge between a front and the decision: a front translates its protocol into a
:class:`~sidecar.core.request.CheckRequest`, calls :meth:`Edge.answer_now` (and awaits
:meth:`Edge.answer` only for a pending step), and translates the :data:`Answer` back.

An answer is one of:

- the token's cache :class:`~sidecar.core.entry.Entry` (an allow: its
  :class:`~sidecar.core.headers.CredentialHeaders` were built at fill, so a cache hit allocates
  nothing here);
- :class:`Allow`: an allow that carries more than the token's headers: client copies of
  credential headers the answer does not set, named for the proxy to remove
  (``response.forged_headers = "remove"``), and for a DPoP-bound token with ``dpop.nonce`` the
  current nonce for the client (RFC 9449 §9: ``DPoP-Nonce`` on 200 as on 401);
- a :class:`~sidecar.fronts.render.RenderedDenial`: status, challenge and body, rendered once per
  kind of denial and reused.

An HTTP answer also says how long a proxy's own decision cache may keep it (:class:`EdgeTtl`,
nginx's ``X-Accel-Expires``): an allow at most ``response.edge_ttl`` seconds and never past what
the cache fill allowed (:func:`~sidecar.core.cache.edge_second`); anything else never.

One :class:`Edge` serves one configuration, and holds what a front reads from it (the header
names, the forged and repeated header rules). :class:`LiveEdge` is the edge of the sidecar's current
configuration: a reload swaps it between two requests (runtime.py); a front takes ``.edge`` once
per check and keeps it to the answer, so a check in flight finishes on the configuration it
began on.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from multidict import istr

from sidecar.core.decision import Decided, Decider
from sidecar.core.entry import Entry
from sidecar.core.headers import CredentialHeaders
from sidecar.core.outcome import Deny, Pending
from sidecar.core.request import CheckRequest
from sidecar.fronts.forged import ForgedHeaders
from sidecar.fronts.render import RenderedDenial, render_denial, unset
from sidecar.fronts.repeated import RepeatedHeaders
from sidecar.runtime import Sidecar
from sidecar.support.memo import Memo

MEMO_SIZE = 4096
EXPIRES = istr("X-Accel-Expires")  # nginx: how long proxy_cache may keep the answer; "0": not at all
NEVER = "0"


class Allow:
    """An allow that also asks the proxy to remove ``names`` and/or hands the client a DPoP ``nonce``
    (only requests with forged copies, and DPoP requests with ``dpop.nonce``, pay for it); it is
    this request's own answer (never for a proxy's decision cache)."""

    __slots__ = ("headers", "names", "nonce")

    def __init__(self, headers: CredentialHeaders, names: tuple[str, ...], nonce: str | None = None) -> None:
        self.headers = headers
        self.names = names
        self.nonce = nonce


Answer = Entry | Allow | RenderedDenial


class EdgeTtl:
    """``response.edge_ttl``: nginx's ``X-Accel-Expires`` for an allow answered now.

    ``@S`` names the last whole Unix second nginx's decision cache may answer with the allow (it
    keeps an entry until that second is over, by its own clock: one host's, or synchronized), so at
    most ``ttl`` seconds from now and never past what the cache fill allowed
    (:func:`~sidecar.core.cache.edge_second`); ``0``: not at all. Every token far from its
    deadline shares one value per second: nothing is formatted per request.
    """

    __slots__ = ("_clock", "_second", "_ttl", "_until", "_value")

    def __init__(self, ttl: int, clock: Callable[[], float] = time.time) -> None:
        self._ttl = ttl
        self._clock = clock  # wall clock
        self._second = -1  # the second _until was computed in
        self._until = 0
        self._value = NEVER

    def of(self, allow: Entry) -> str:
        if not self._ttl:
            return NEVER
        now = int(self._clock())
        if now != self._second:
            self._second, self._until = now, now + self._ttl - 1
            self._value = f"@{self._until}"
        last = allow.edge
        if last >= self._until:
            return self._value
        return f"@{last}" if last >= now else NEVER


class Edge:
    __slots__ = ("_decider", "_denied", "_invalid_request_status", "_nonces", "_proof_algs", "_realm", "cert_header",
                 "expires", "forged", "keep_commas", "path_prefix", "policy_header", "removals", "repeated",
                 "source_header", "traced")

    def __init__(self, decider: Decider, realm: str, invalid_request_status: int, edge_ttl: int = 0) -> None:
        self._decider = decider
        self.expires = EdgeTtl(edge_ttl).of  # an allow's X-Accel-Expires (the HTTP front sends it)
        # What the fronts read of a request under this configuration (set by Edge.of).
        self.cert_header = self.source_header = self.policy_header = self.path_prefix = ""
        self.keep_commas = False
        self.forged = ForgedHeaders("x-credential-")
        self.repeated = RepeatedHeaders()
        self.traced = decider.outcomes.tracing is not None  # a front hands over the caller's trace context
        self._realm = realm
        self._invalid_request_status = invalid_request_status  # server.invalid_request_status
        self._proof_algs = decider.proof_algs
        self._nonces = decider.nonces  # dpop.nonce: handed to every DPoP request, allowed or denied
        self._denied: Memo[tuple[type, str, str | None, int, bool, str | None], RenderedDenial] = Memo(MEMO_SIZE)
        self.removals = decider.policies.headers.removals  # response.remove_upstream_headers, lower case

    def answer_now(self, request: CheckRequest) -> Answer | Pending:
        """The answer when it needs no await (a cached token); else the step to hand to :meth:`answer`."""
        decided = self._decider.decide_now(request)
        if isinstance(decided, Pending):
            return decided
        return self._render(decided, request)

    @classmethod
    def of(cls, sidecar: Sidecar) -> Edge:
        config = sidecar.config
        response = config.response
        edge = cls(sidecar.decider, response.realm, config.server.invalid_request_status, response.edge_ttl)
        edge.cert_header, edge.source_header = config.client_cert.header.lower(), config.admission.source_header
        edge.policy_header, edge.path_prefix = config.routing.policy_header, config.routing.path_prefix
        # gRPC: Envoy joins repeated headers with ",", which XFCC, Traefik's list and auto keep whole.
        edge.keep_commas = config.client_cert.format in ("xfcc", "traefik", "auto")
        edge.forged = ForgedHeaders(response.prefix)
        edge.repeated = RepeatedHeaders(edge.policy_header, edge.source_header)
        return edge

    async def answer(self, request: CheckRequest, pending: Pending) -> Answer:
        return self._render(await self._decider.decide(request, pending), request)

    def _render(self, decided: Decided, request: CheckRequest) -> Answer:
        if isinstance(decided, Deny):
            return self._denial(decided)
        # A DPoP-bound token was allowed only with a verified proof: its client gets the nonce.
        nonce = None if self._nonces is None or decided.info.cnf_jkt is None else self._nonces.current()
        names = unset(decided.headers, request.forged) if request.forged else ()
        if names or nonce is not None:
            return Allow(decided.headers, names, nonce)
        return decided

    def _denial(self, deny: Deny) -> RenderedDenial:
        denial = deny.denial
        nonce = self._nonces.current() if self._nonces is not None and deny.dpop_scheme else None
        key = (type(denial), denial.reason, denial.scope, denial.retry_after, deny.dpop_scheme, nonce)
        rendered = self._denied.get(key)
        if rendered is None:  # a new nonce every quarter of dpop.nonce_lifetime: a few kinds more each time
            rendered = self._denied.put(key, render_denial(
                denial, self._realm, self._invalid_request_status, proof_algs=self._proof_algs,
                dpop_scheme=deny.dpop_scheme, nonce=nonce))
        return rendered


class LiveEdge:
    """The :class:`Edge` of the sidecar's current configuration, swapped by a reload."""

    __slots__ = ("edge",)

    def __init__(self, sidecar: Sidecar) -> None:
        self.edge = Edge.of(sidecar)
        sidecar.on_swap(lambda: self._swap(sidecar))

    def _swap(self, sidecar: Sidecar) -> None:
        self.edge = Edge.of(sidecar)
