"""Stage 1b: which client certificate counts for a check, whatever the front.

The proxy vouches for the certificate its TLS handshake verified; the sidecar hears it in one of
two ways: Envoy's gRPC ext_authz sends its own peer certificate (``attributes.source.certificate``,
URL-encoded PEM, with ``include_peer_certificate``), and every front may send the certificate
header (``client_cert.header`` in ``client_cert.format``). The rules, the same for every front:

- nothing counts unless the check comes from a trusted proxy (``client_cert.trusted_proxies``):
  whoever else reaches the port could write either field;
- two copies of the certificate header mean a proxy appended instead of replacing: refused
  (``cert_invalid``) rather than guessing which copy it set, even when a peer certificate is there;
- the peer certificate, when sent, is the one that counts; else the single header copy; an empty
  header is no certificate (Caddy sends one when the client presented none);
- with ``client_cert.ca_file`` the chain must end at the bundle and every certificate of it must
  be within its validity window (client_trust.py): a memoized verdict lasts no longer than the
  first of them to expire; the bundle is reloaded when it changes.

A header value's thumbprint (or failure, or trust verdict) is memoized per value
(:class:`~sidecar.core.client_cert.CertificateReader`): a cache hit does no X.509 work.
"""

from __future__ import annotations

import time

from sidecar.config import CertFormat, ClientCertConfig
from sidecar.core.client_cert import CertificateError, CertificateReader
from sidecar.core.client_trust import ClientTrust, window_problem
from sidecar.core.errors import InvalidToken
from sidecar.core.extract import TrustedProxies
from sidecar.core.request import CheckRequest


class PresentedCertificate:
    __slots__ = ("_header", "_leeway", "_peer", "_trusted", "trust")

    def __init__(self, config: ClientCertConfig, trusted: TrustedProxies, leeway: float) -> None:
        self._trusted = trusted
        self._leeway = leeway
        self.trust = ClientTrust(config.ca_file, require_client_auth=config.require_client_auth) \
            if config.ca_file else None

        def reader(fmt: CertFormat) -> CertificateReader:
            return CertificateReader(fmt, trust_xfcc_hash=config.xfcc_trust_hash,
                                     max_size=config.max_size, memo_bytes=config.memo_max_bytes, trust=self.trust)

        self._header = reader(config.format)
        self._peer = reader("escaped_pem")  # Envoy's attributes.source.certificate

    def thumbprint(self, request: CheckRequest) -> str | None:
        """The RFC 8705 thumbprint of the certificate the proxy vouches for; None when there is none.
        Raises InvalidToken (``cert_invalid``, ``cert_untrusted``, ``cert_expired``, ...)."""
        if request.peer not in self._trusted:
            return None
        copies = request.certificates
        if len(copies) > 1:
            raise InvalidToken("cert_invalid", "more than one client certificate header")
        if request.peer_certificate:
            value, reader = request.peer_certificate, self._peer
        elif copies and copies[0] and not copies[0].isspace():  # isspace: no copy of a 2 KB header
            value, reader = copies[0], self._header
        else:
            return None
        try:
            if self.trust is None:
                return reader.thumbprint(value)
            presented = reader.presented(value)
        except CertificateError as exc:
            raise InvalidToken("cert_invalid", f"client certificate header: {exc}") from None
        problem = window_problem(presented, time.time(), self._leeway) or presented.problem
        if problem is not None:
            raise InvalidToken(problem, "the client certificate is not valid under client_cert.ca_file")
        return presented.thumbprint

    def reload_trust(self) -> bool:
        """Reload ``client_cert.ca_file`` if it changed; every memoized verdict is then dropped."""
        if self.trust is None or not self.trust.reload():
            return False
        self._header.forget()
        self._peer.forget()
        return True
