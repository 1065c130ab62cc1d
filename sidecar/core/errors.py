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
    ├── IdpUnavailable       503 (fail closed; kind: an IdpFailure)
    └── InternalError        503 (fail closed)
"""

from __future__ import annotations

from enum import Enum


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


class IdpFailure(Enum):
    """Why the IdP could not answer. The value is the ``sidecar_idp_requests_total`` result label
    (the ``HTTP_*`` kinds label with the status itself, e.g. ``http_502``)."""

    # No answer: the connection, the TLS handshake or the wait for the answer failed.
    REFUSED = "refused"
    CONNECT_TIMEOUT = "connect_timeout"
    CONNECT_FAILED = "connect_failed"
    DNS = "dns"
    TIMEOUT = "timeout"
    DISCONNECTED = "disconnected"  # closed without answering (an idle keep-alive connection)
    RESET = "reset"  # TLS 1.3: how a rejected client certificate usually shows
    TLS = "tls"
    TLS_UNTRUSTED = "tls_untrusted"
    TLS_HOSTNAME = "tls_hostname"
    TLS_EXPIRED = "tls_expired"
    TRUNCATED = "truncated"
    CONNECTION = "connection"
    # An answer, but not a usable one.
    HTTP_4XX = "http_4xx"  # about this request (a token the IdP will not look at): not an outage
    HTTP_429 = "http_429"  # RFC 6585 §4: the IdP asks us to back off
    HTTP_5XX = "http_5xx"
    HTTP_503 = "http_503"
    HTTP_OTHER = "http_other"  # a redirect or another 2xx: not what the protocol answers
    CONTENT_TYPE = "content_type"
    TOO_LARGE = "too_large"
    GARBAGE = "garbage"  # not JSON
    MALFORMED = "malformed"  # JSON, but not an RFC 7662 answer
    UNUSABLE = "unusable"  # a JWK Set without a usable key
    DISCOVERY_FAILED = "discovery_failed"
    # Our side: the IdP was not asked.
    NO_ENDPOINT = "no_endpoint"
    NO_JWKS_URI = "no_jwks_uri"
    SATURATED = "saturated"  # no introspection slot in time (idp.max_concurrent): our own limit
    BREAKER_OPEN = "breaker_open"

    @property
    def retryable(self) -> bool:
        """The IdP did no work on the request, so asking again is safe and cheap."""
        return self in _RETRYABLE

    @property
    def is_idp_failure(self) -> bool:
        """The IdP (or the way to it) failed: counts toward the circuit breaker. Not a per-request
        4xx answer, not our own limits, not a missing endpoint."""
        return self not in _NOT_IDP_FAILURES

    @property
    def allows_stale(self) -> bool:
        """Whether stale-if-error may answer: the IdP itself failed, or the breaker it opened is
        open. Never ``saturated`` or a 4xx: then the IdP works, and only our limits or this
        request stood in the way."""
        return self.is_idp_failure or self is IdpFailure.BREAKER_OPEN

    @classmethod
    def of_status(cls, status: int) -> IdpFailure:
        """The kind of a non-200 HTTP answer."""
        if status in (429, 503):
            return cls.HTTP_429 if status == 429 else cls.HTTP_503
        if 500 <= status <= 599:
            return cls.HTTP_5XX
        return cls.HTTP_4XX if 400 <= status <= 499 else cls.HTTP_OTHER


_RETRYABLE = frozenset({IdpFailure.REFUSED, IdpFailure.CONNECT_TIMEOUT, IdpFailure.DISCONNECTED})
_NOT_IDP_FAILURES = frozenset({IdpFailure.HTTP_4XX, IdpFailure.NO_ENDPOINT, IdpFailure.NO_JWKS_URI,
                               IdpFailure.SATURATED, IdpFailure.BREAKER_OPEN})


class IdpUnavailable(Denial):
    """The identity provider could not answer: fail closed with 503 and Retry-After.

    ``kind`` says why (read it, never parse ``detail``); ``idp_status`` is the HTTP status of
    the IdP's answer for the ``HTTP_*`` kinds (``status`` stays the 503 we answer).
    """

    status = 503
    error = None
    description = "The authorization server is unavailable"

    def __init__(self, kind: IdpFailure, detail: str = "", *, retry_after: int = 1,
                 status: int | None = None) -> None:
        self.kind = kind
        self.idp_status = status
        # The log line reads "<result>: <detail>", as it always has.
        super().__init__("idp_unavailable", f"{self.result}: {detail}" if detail else self.result)
        self.retry_after = retry_after

    @property
    def result(self) -> str:
        """The ``sidecar_idp_requests_total`` result label: the kind, or ``http_<status>``."""
        if self.idp_status is not None and self.kind.value.startswith("http_"):
            return f"http_{self.idp_status}"
        return self.kind.value

    @property
    def is_idp_failure(self) -> bool:
        return self.kind.is_idp_failure


class InternalError(Denial):
    """A bug in the sidecar: fail closed like an IdP outage, never answer 500 with a stack."""

    status = 503
    error = None
    description = "The authorization service failed"

    def __init__(self, detail: str = "") -> None:
        super().__init__("internal_error", detail)
