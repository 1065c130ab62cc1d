"""The one edge between a front and the decision: a front translates its protocol into a
:class:`~sidecar.core.request.CheckRequest`, calls :meth:`Edge.answer_now` (and awaits
:meth:`Edge.answer` only for a pending step), and translates the :data:`Answer` back.

An answer is one of:

- the token's :class:`~sidecar.core.headers.CredentialHeaders` (an allow; the object the cache
  holds, so a cache hit allocates nothing here);
- :class:`Allow`: an allow that carries more than the token's headers: client copies of
  credential headers the answer does not set, named for the proxy to remove
  (``response.forged_headers = "remove"``), and for a DPoP-bound token with ``dpop.nonce`` the
  current nonce for the client (RFC 9449 §9: ``DPoP-Nonce`` on 200 as on 401);
- a :class:`~sidecar.fronts.render.RenderedDenial`: status, challenge and body, rendered once per
  kind of denial and reused.
"""

from __future__ import annotations

from sidecar.core.decision import Decided, Decider
from sidecar.core.headers import CredentialHeaders
from sidecar.core.outcome import Deny, Pending
from sidecar.core.request import CheckRequest
from sidecar.fronts.render import RenderedDenial, render_denial, unset
from sidecar.runtime import Sidecar
from sidecar.support.memo import Memo

MEMO_SIZE = 4096


class Allow:
    """An allow that also asks the proxy to remove ``names`` and/or hands the client a DPoP ``nonce``
    (only requests with forged copies, and DPoP requests with ``dpop.nonce``, pay for it)."""

    __slots__ = ("headers", "names", "nonce")

    def __init__(self, headers: CredentialHeaders, names: tuple[str, ...], nonce: str | None = None) -> None:
        self.headers = headers
        self.names = names
        self.nonce = nonce


Answer = CredentialHeaders | Allow | RenderedDenial


class Edge:
    __slots__ = ("_decider", "_denied", "_invalid_request_status", "_nonces", "_proof_algs", "_realm", "removals")

    def __init__(self, decider: Decider, realm: str, invalid_request_status: int) -> None:
        self._decider = decider
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
        return cls(sidecar.decider, config.response.realm, config.server.invalid_request_status)

    async def answer(self, request: CheckRequest, pending: Pending) -> Answer:
        return self._render(await self._decider.decide(request, pending), request)

    def _render(self, decided: Decided, request: CheckRequest) -> Answer:
        if isinstance(decided, Deny):
            return self._denial(decided)
        headers = decided.headers
        # A DPoP-bound token was allowed only with a verified proof: its client gets the nonce.
        nonce = None if self._nonces is None or decided.info.cnf_jkt is None else self._nonces.current()
        names = unset(headers, request.forged) if request.forged else ()
        if names or nonce is not None:
            return Allow(headers, names, nonce)
        return headers

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
