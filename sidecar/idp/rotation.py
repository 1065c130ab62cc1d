"""Reload the IdP client certificate, key and CA bundle when their files change, without restarts.

RFC 8705 §2.1 ``tls_client_auth`` authenticates the sidecar by its certificate, and that
certificate is short-lived (cert-manager renews it and the kubelet republishes the Secret). The
kubelet publishes a Secret volume atomically (a new timestamped directory, a ``..data`` symlink
renamed over the old one), so the files are compared by content on each poll
(:class:`~sidecar.support.watch.FileWatch`).

On a change it builds a new SSLContext from the resolved files and hands it to
:meth:`IdpSession.swap`, which starts a new client session and closes the old one once the calls
in flight on it have ended. A file that does not load (half written, key not matching the
certificate, not PEM) keeps the old context: the error is logged (file keys and the OpenSSL
reason, never file contents), ``sidecar_tls_reload_errors`` counts it, and the same content is
not retried until it changes again. Readiness turns false only when the certificate in use has
expired (:meth:`CertificateWatcher.expired`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging

from cryptography import x509

from sidecar.config import IdpConfig
from sidecar.idp.tls import IdpSession, TlsConfigError, client_context
from sidecar.support.metrics import Metrics
from sidecar.support.watch import FileWatch

log = logging.getLogger(__name__)
WATCHED = ("cert_file", "key_file", "ca_file")


def certificate_expiry(pem: bytes | None) -> dt.datetime | None:
    """``notAfter`` of the first certificate in ``pem`` (the leaf we present)."""
    if pem is None:
        return None
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc


def files_of(idp: IdpConfig) -> FileWatch:
    return FileWatch({name: getattr(idp, name) for name in WATCHED})


class CertificateWatcher:
    """Polls the IdP TLS files every ``idp.reload_interval`` seconds and swaps the session on change."""

    def __init__(self, idp: IdpConfig, session: IdpSession, metrics: Metrics) -> None:
        self._idp = idp
        self._session = session
        self._metrics = metrics
        self._files = files_of(idp)
        self._last_error = ""  # the same unreadable state is counted and logged once
        self.not_after: dt.datetime | None = None
        self.reloads = 0
        self.watching = bool(self._files)
        if self.watching:
            current = self._files.poll()
            assert current is not None  # the first read is always new
            self.not_after = certificate_expiry(current.contents.get("cert_file"))

    def expired(self, now: dt.datetime | None = None) -> bool:
        """True when the certificate in use is past its ``notAfter``: the IdP will refuse it."""
        now = now or dt.datetime.now(dt.UTC)
        return self.not_after is not None and now >= self.not_after

    async def run(self) -> None:
        interval = self._idp.reload_interval
        if interval <= 0 or not self.watching:
            return
        while True:
            await asyncio.sleep(interval)
            self.poll()

    def poll(self) -> bool:
        """Reload when the content changed; True when a new context is in use."""
        if not self.watching:
            return False
        try:
            current = self._files.poll()
        except OSError as exc:  # a file missing for a moment between two kubelet steps
            return self._failed("unreadable", f"{type(exc).__name__} {exc.strerror or ''}".strip())
        self._last_error = ""
        if current is None:
            return False
        p = current.paths
        resolved = dataclasses.replace(self._idp, cert_file=p.get("cert_file"), key_file=p.get("key_file"),
                                       ca_file=p.get("ca_file"))
        try:
            context = client_context(resolved)
            not_after = certificate_expiry(current.contents.get("cert_file"))
            if self._files.changed_since(current):  # changed while loading: next poll
                self._files.seen = ""
                return False
        except (TlsConfigError, OSError, ValueError) as exc:
            return self._failed("invalid", str(exc) if isinstance(exc, TlsConfigError) else type(exc).__name__)
        self._session.swap(context)
        self.not_after = not_after
        self.reloads += 1
        log.info("idp tls files reloaded", extra={"not_after": not_after.isoformat() if not_after else None,
                                                  "reloads": self.reloads})
        return True

    def _failed(self, kind: str, error: str) -> bool:
        if error == self._last_error:
            return False
        self._last_error = error
        self._metrics.tls_reload_errors.inc()
        log.error("idp tls files not reloaded; keeping the current certificate",
                  extra={"problem": kind, "error": error, "files": [f"idp.{n}" for n in WATCHED],
                         "certificate_expired": self.expired()})
        return False
