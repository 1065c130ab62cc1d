"""What a front hands the decision: the raw facts of one check, whatever the protocol.

The original request (``method``, ``path``, ``host``, ``scheme``) is what per-route policies and the
DPoP ``htu``/``htm`` checks compare against. ``headers`` are read only when a decision line or a
trace needs them (the request id, the caller's trace context): after the answer, off the hot path.
``started`` is when the front began the check (``time.time``): the decision's latency runs from
there, and a cached token's time window is checked at that instant.

Fronts only translate; every rule about these facts lives in the core: which certificate counts
(presented.py), which source a cache miss is charged to (admission.py), whether the description of
the original request holds (target.py) and whether it and the named policy count (only from a
trusted proxy: target.py, routes.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from time import time

from sidecar.support.tracing import Headers


class CheckRequest:
    """One check. A plain slotted class: built once per request on the hot path."""

    __slots__ = ("authorization", "certificates", "dpop_proofs", "forged", "forwarded", "headers", "host", "method",
                 "path", "peer", "peer_certificate", "policy", "repeated", "scheme", "started")

    def __init__(self, authorization: Sequence[str], certificates: Sequence[str] = (), peer: str | None = None,
                 *, peer_certificate: str | None = None, forwarded: str | None = None,
                 method: str | None = None, path: str | None = None, host: str | None = None,
                 scheme: str | None = None, dpop_proofs: Sequence[str] = (), policy: str | None = None,
                 forged: Sequence[str] = (), repeated: Sequence[str] = (), headers: Headers | None = None) -> None:
        self.started = time()
        self.authorization = authorization  # every Authorization field value received
        self.certificates = certificates  # every copy of the certificate header (client_cert.header)
        self.peer = peer  # the address of whoever sent the check (the proxy)
        # Envoy gRPC: the TLS peer certificate Envoy itself verified (attributes.source.certificate)
        self.peer_certificate = peer_certificate
        self.forwarded = forwarded  # the client address the proxy vouches for (admission.source_header)
        # The ORIGINAL request the proxy asks about (counts only from a trusted proxy), as the upstream
        # receives it: nginx X-Original-Method / X-Original-URI / Host ($host) / X-Forwarded-Proto;
        # Traefik, Caddy, HAProxy X-Forwarded-Method / -Uri / -Host / -Proto; Envoy HTTP: the check's
        # own method and path minus routing.path_prefix, Host and x-forwarded-proto; Envoy gRPC:
        # attributes.request.http.
        self.method = method
        self.path = path  # with the query, as the proxy sent it
        self.host = host
        self.scheme = scheme  # http or https
        self.dpop_proofs = dpop_proofs  # every DPoP proof header value received (RFC 9449 §4.3: exactly one may count)
        self.policy = policy  # the policy the proxy names for this route (routing.policy_header)
        # Header names in the credential namespace the check request carries (fronts/forged.py): the
        # client's copies, which the upstream must never see (response.forged_headers).
        self.forged = forged
        # Names of the headers describing the request (original URI, method, host, scheme, policy
        # name, client address) that came more than once (fronts/repeated.py): refused (core/target.py).
        self.repeated = repeated
        # x-request-id, traceparent, tracestate: read after the decision, never on the hot path.
        self.headers = headers
