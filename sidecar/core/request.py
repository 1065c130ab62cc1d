"""What a front hands the decision: the raw facts of one check, whatever the protocol.

Fronts only translate; every rule about these facts lives in the core (decision.py): which
certificate copy counts (none when the peer is not a trusted proxy, a denial when there are
several), and which source a cache miss is charged to (admission.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.core.client_cert import CertificateReader


class CheckRequest:
    """One check. A plain slotted class: built once per request on the hot path."""

    __slots__ = ("authorization", "certificates", "forwarded", "peer", "reader")

    def __init__(self, authorization: Sequence[str], certificates: Sequence[str] = (), peer: str | None = None,
                 *, reader: CertificateReader | None = None, forwarded: str | None = None) -> None:
        self.authorization = authorization  # every Authorization field value received
        self.certificates = certificates  # every copy of the certificate header (or gRPC peer certificate)
        self.peer = peer  # the address of whoever sent the check (the proxy)
        self.reader = reader  # how to read the certificate; None: client_cert.format
        self.forwarded = forwarded  # the client address the proxy vouches for (admission.source_header)
