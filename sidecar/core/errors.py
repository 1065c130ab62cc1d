"""Typed denials raised by the stages of a decision.

Each denial carries its HTTP status, its RFC 6750 §3.1 error code and a stable reason code.
The reason code is the log field and the metrics label; the public description stays generic.
Every reason, with its class and meaning, is listed in :mod:`sidecar.core.reasons`.

    Denial
    ├── MissingToken         401 (no error code: RFC 6750 §3.1, the request lacked credentials)
    ├── InvalidRequest       400 invalid_request (server.invalid_request_status)
    ├── InvalidToken         401 invalid_token
    ├── InsufficientScope    403 insufficient_scope
    ├── InvalidDpopProof     401 invalid_dpop_proof (RFC 9449 §7.1)
    ├── RouteDenied          403 (no error code; fail closed)
    ├── RateLimited          429 (fail closed)
    ├── ReplayStoreFull      503 (fail closed)
    ├── IdpUnavailable       503 (fail closed; why: idp/failures.py)
    └── InternalError        503 (fail closed)
"""

from __future__ import annotations


class Denial(Exception):
    """A request that must not pass. ``detail`` goes to the log only, never to the client."""

    status: int = 401
    error: str | None = None
    description: str = ""
    retry_after: int = 1  # seconds, for the 503s

    def __init__(self, reason: str, detail: str = "", *, scope: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.scope = scope


class MissingToken(Denial):
    """RFC 6750 §3.1: no error code when the request carried no authentication information."""

    status = 401
    error = None


class InvalidRequest(Denial):
    """RFC 6750 §3.1 invalid_request: malformed or duplicated credentials (400)."""

    status = 400
    error = "invalid_request"
    description = "The request is malformed"


class InvalidToken(Denial):
    """RFC 6750 §3.1 invalid_token: expired, revoked, malformed or not bound to this client (401).

    RFC 8705 §3: a binding mismatch MUST be rejected the same way.
    """

    status = 401
    error = "invalid_token"
    description = "The access token is invalid"


class InsufficientScope(Denial):
    """RFC 6750 §3.1 insufficient_scope: the token lacks a required scope (403)."""

    status = 403
    error = "insufficient_scope"
    description = "The access token lacks a required scope"


class InvalidDpopProof(Denial):
    """RFC 9449 §7.1 invalid_dpop_proof: the DPoP proof is missing, malformed or fails a §4.3 check
    (401, answered with the ``DPoP`` challenge)."""

    status = 401
    error = "invalid_dpop_proof"
    description = "The DPoP proof is invalid"


class RouteDenied(Denial):
    """No policy for this request: the proxy named an unknown one, or no rule matched (fail closed).

    A configuration matter, not the token's: no RFC 6750 error code, 403 like a missing scope.
    """

    status = 403
    error = None
    description = "No policy admits this request"


class RateLimited(Denial):
    """Too many new tokens from one source (RFC 6585 §4 429 with Retry-After): not an IdP failure."""

    status = 429
    error = None
    description = "Too many new tokens from this client"

    def __init__(self, detail: str = "", *, retry_after: int = 1) -> None:
        super().__init__("rate_limited", detail)
        self.retry_after = retry_after


class ReplayStoreFull(Denial):
    """The DPoP replay store holds ``dpop.replay_max_entries`` live proofs: a new proof cannot be
    proven fresh, so it is refused (503 + Retry-After) rather than accepted unremembered."""

    status = 503
    error = None
    description = "Too many DPoP proofs at once"

    def __init__(self, detail: str = "") -> None:
        super().__init__("dpop_replay_full", detail)


class IdpUnavailable(Denial):
    """The identity provider could not answer: fail closed with 503 and Retry-After.

    ``result`` says why (the ``sidecar_idp_requests_total`` result label; the idp layer raises a
    subclass that carries the kind, sidecar/idp/failures.py); ``allows_stale`` whether
    ``cache.stale_if_error`` may answer instead: only when the IdP itself failed, never for our own
    limits or a per-request answer; ``throttled`` whether the IdP asked us to slow down (429): the
    source charged with the call backs off (admission.py).
    """

    status = 503
    error = None
    description = "The authorization server is unavailable"

    def __init__(self, result: str, detail: str = "", *, retry_after: int = 1, allows_stale: bool = False,
                 throttled: bool = False) -> None:
        super().__init__("idp_unavailable", f"{result}: {detail}" if detail else result)  # "<result>: <detail>"
        self.result, self.allows_stale, self.retry_after = result, allows_stale, retry_after
        self.throttled = throttled


class InternalError(Denial):
    """A bug in the sidecar: fail closed like an IdP outage, never answer 500 with a stack."""

    status = 503
    error = None
    description = "The authorization service failed"

    def __init__(self, detail: str = "") -> None:
        super().__init__("internal_error", detail)
