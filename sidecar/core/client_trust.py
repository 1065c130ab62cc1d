"""Optional CA validation of the forwarded client certificate (``client_cert.ca_file``).

RFC 8705 §3 binds a token to a certificate by its thumbprint, which is all a self-signed
certificate (§2.2) can offer. Where TLS ends at an ingress that does not verify the client's
chain (nginx ``ssl_verify_client optional_no_ca``, a load balancer), this is the place that
does, as Kong's ``proof_of_possession_mtls_from_header`` with ``ca_certificates`` does:

- the chain, from the leaf through the intermediates the header carries (PEM chains, Traefik's
  list, XFCC ``Chain=``), must end at a CA of the bundle — RFC 5280 path validation by
  ``cryptography``'s verifier (basic constraints, key usage, signatures, EKU ``clientAuth`` when
  the leaf has an EKU), without requiring a SAN (client certificates often name their subject
  only); ``client_cert.require_client_auth`` also requires the EKU to be present;
- the validity period of the whole chain — the latest ``notBefore`` to the earliest ``notAfter``
  of the leaf, the intermediates and the root the path was built through — holds within
  ``policy.leeway`` (checked per request, cheaply: the verdict of the chain is memoized with the
  header value, the time window is not; so a memoized verdict lasts no longer than the first
  certificate of its chain to expire);
- the bundle is reloaded when its file changes (polled every ``idp.reload_interval``), and every
  memoized verdict is dropped then.

Denials: ``cert_untrusted``, ``cert_expired``, ``cert_not_yet_valid`` (401 ``invalid_token``).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store, VerificationError

from sidecar.support.watch import FileWatch

log = logging.getLogger(__name__)
MAX_CHAIN = 8  # intermediates taken from a header: a longer list is not a client's chain


@dataclass(frozen=True, slots=True)
class Presented:
    """A certificate header as the trust check saw it: its leaf's thumbprint, its chain's validity
    window (POSIX seconds: the leaf's alone when the chain did not verify) and the problem with its
    chain, if any."""

    thumbprint: str
    not_before: float
    not_after: float
    problem: str | None


class ClientTrust:
    def __init__(self, ca_file: str, *, require_client_auth: bool = False) -> None:
        self._file = FileWatch({"ca_file": ca_file})
        self._require_client_auth = require_client_auth
        self._store: Store | None = None
        self.reload()
        if self._store is None:
            raise ValueError(f"client_cert.ca_file: no CA certificate in {ca_file}")

    def reload(self) -> bool:
        """Load the bundle when its content changed; True when a new one is in use."""
        try:
            current = self._file.poll()  # the same content is not retried until it changes
        except OSError as exc:
            log.error("client CA bundle unreadable; keeping the current one", extra={"error": type(exc).__name__})
            return False
        if current is None:
            return False
        try:
            store = Store(x509.load_pem_x509_certificates(current.contents["ca_file"]))
        except ValueError as exc:
            log.error("client CA bundle invalid; keeping the current one", extra={"error": str(exc)[:200]})
            return False
        self._store = store
        log.info("client CA bundle loaded")
        return True

    def check(self, thumbprint: str, leaf_der: bytes, chain: list[bytes]) -> Presented:
        """The chain's verdict (computed once per header value) and the chain's window."""
        leaf = x509.load_der_x509_certificate(leaf_der)
        start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
        path = self._path(leaf, chain, min(max(dt.datetime.now(dt.UTC), start), end))
        problem = self._problem(leaf, path)
        certificates = [leaf] if path is None else path
        return Presented(thumbprint, max(c.not_valid_before_utc for c in certificates).timestamp(),
                         min(c.not_valid_after_utc for c in certificates).timestamp(), problem)

    def _path(self, leaf: x509.Certificate, chain: list[bytes], when: dt.datetime) -> list[x509.Certificate] | None:
        """The verified path, leaf to root; None when there is none."""
        if self._store is None or len(chain) > MAX_CHAIN:
            return None
        try:
            intermediates = [x509.load_der_x509_certificate(der) for der in chain]
        except ValueError:
            return None
        ee = ExtensionPolicy.webpki_defaults_ee().may_be_present(x509.SubjectAlternativeName,
                                                                  Criticality.AGNOSTIC, None)
        verifier = (PolicyBuilder().store(self._store).time(when)
                    .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee)
                    .build_client_verifier())
        try:
            return [leaf, *verifier.verify(leaf, intermediates).chain]
        except VerificationError:
            return None

    def _problem(self, leaf: x509.Certificate, path: list[x509.Certificate] | None) -> str | None:
        if path is None:
            return "cert_untrusted"
        if self._require_client_auth and not _has_client_auth(leaf):
            return "cert_untrusted"
        return None


def window_problem(presented: Presented, now: float, leeway: float) -> str | None:
    """``cert_expired`` / ``cert_not_yet_valid`` outside the chain's validity, within the leeway."""
    if now > presented.not_after + leeway:
        return "cert_expired"
    if now + leeway < presented.not_before:
        return "cert_not_yet_valid"
    return None


def _has_client_auth(leaf: x509.Certificate) -> bool:
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in usages
