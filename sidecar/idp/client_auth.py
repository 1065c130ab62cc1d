"""How the sidecar authenticates itself to the IdP's introspection endpoint (``idp.auth_method``).

- ``tls_client_auth`` (RFC 8705 §2.1) and ``self_signed_tls_client_auth`` (§2.2): the TLS client
  certificate authenticates us (``idp.cert_file``; for §2.2 a self-signed certificate the IdP
  knows by its key); ``client_id`` is still sent in the form.
- ``client_secret_basic`` (RFC 6749 §2.3.1, with form-urlencoded id and secret) and
  ``client_secret_post``.
- ``private_key_jwt`` (RFC 7523 §2.2, OpenID Connect Core §9): a JWT signed with
  ``idp.assertion_key_file`` per call — ``iss`` and ``sub`` our ``client_id``, ``aud`` the
  configured audience (the issuer by default, else the endpoint), a fresh ``jti``, a short ``exp``
  — in ``client_assertion`` with the RFC 7523 ``client_assertion_type``. The key file is read
  again when it changes (a rotated Secret), checked at most once a second.
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from collections.abc import Mapping
from urllib.parse import quote_plus

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from sidecar.config import IdpConfig, client_secret
from sidecar.support.watch import FileWatch

log = logging.getLogger(__name__)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 60  # seconds
_ACCEPT = {"Accept": "application/json"}


class ClientAuth:
    """The form fields and headers of one call to the IdP."""

    def __init__(self, idp: IdpConfig) -> None:
        self._idp = idp
        self._form: dict[str, str] = {"client_id": idp.client_id}
        self._headers: Mapping[str, str] = _ACCEPT
        self._key: object = None
        self._key_file = FileWatch({"assertion_key_file": idp.assertion_key_file})
        self._checked_at = 0.0
        method = idp.auth_method
        if method == "client_secret_post":
            self._form["client_secret"] = client_secret(idp) or ""
        elif method == "client_secret_basic":
            # RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding.
            pair = f"{quote_plus(idp.client_id)}:{quote_plus(client_secret(idp) or '')}".encode()
            self._headers = {**_ACCEPT, "Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
            self._form = {}
        elif method == "private_key_jwt":
            self._reload_if_changed(check_now=True)

    def credentials(self, endpoint: str) -> tuple[dict[str, str], Mapping[str, str]]:
        """(form fields, headers) for a call to ``endpoint``."""
        if self._idp.auth_method != "private_key_jwt":
            return dict(self._form), self._headers
        return {**self._form, "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": self._assertion(endpoint)}, self._headers

    def _assertion(self, endpoint: str) -> str:
        """RFC 7523 §3: iss = sub = client_id, aud the IdP, a unique jti, a short exp."""
        self._reload_if_changed()
        idp = self._idp
        now = int(time.time())
        claims = {"iss": idp.client_id, "sub": idp.client_id, "aud": idp.assertion_audience or idp.issuer or endpoint,
                  "jti": secrets.token_urlsafe(24), "iat": now, "exp": now + ASSERTION_LIFETIME}
        headers = {"kid": idp.assertion_kid} if idp.assertion_kid else None
        return jwt.encode(claims, self._key, algorithm=idp.assertion_alg, headers=headers)  # type: ignore[arg-type]

    def _reload_if_changed(self, *, check_now: bool = False) -> None:
        """Read the key again when its file's content changed (checked at most once a second); a
        file that does not load keeps the current key."""
        monotonic = time.monotonic()
        if not check_now and monotonic - self._checked_at < 1.0:
            return
        self._checked_at = monotonic
        current = self._key_file.poll()
        if current is None:
            return
        try:
            self._key = load_pem_private_key(current.contents["assertion_key_file"], password=None)
        except (ValueError, TypeError):
            if self._key is None:
                raise
            log.error("idp.assertion_key_file does not load; keeping the current key")
