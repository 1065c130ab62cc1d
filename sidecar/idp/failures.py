"""Why a call to the IdP failed: one kind per way it can fail, read by the guard (retry, breaker),
the metrics (the result label) and stale-if-error, instead of parsing messages.

:class:`IdpUnavailable` is the core's :class:`~sidecar.core.errors.IdpUnavailable` (a 503 denial)
with its :class:`IdpFailure` kind; the core sees only what it needs of it (``allows_stale``).
"""

from __future__ import annotations

from enum import Enum

from sidecar.core.errors import IdpUnavailable


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
    HTTP_429 = "http_429"  # RFC 6585 §4: the IdP asks us to back off (the source that called: admission.py)
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


class IdpError(IdpUnavailable):
    """An IdP call that failed, with its kind; ``idp_status`` is the HTTP status of the IdP's
    answer for the ``HTTP_*`` kinds (``status`` stays the 503 we answer)."""

    def __init__(self, kind: IdpFailure, detail: str = "", *, retry_after: int = 1, status: int | None = None) -> None:
        self.kind = kind
        self.idp_status = status
        result = f"http_{status}" if status is not None and kind.value.startswith("http_") else kind.value
        super().__init__(result, detail, retry_after=retry_after, allows_stale=kind.allows_stale,
                         throttled=kind is IdpFailure.HTTP_429)

    @property
    def is_idp_failure(self) -> bool:
        return self.kind.is_idp_failure
