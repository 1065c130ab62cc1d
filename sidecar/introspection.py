"""RFC 7662 token introspection over mutual TLS: the only code that asks the IdP about a token.

§2.1: POST ``application/x-www-form-urlencoded`` with ``token`` and ``token_type_hint``.
RFC 8705 §2.1 ``tls_client_auth``: the client certificate authenticates us; ``client_id`` is
still sent in the form. For IdPs without mTLS, ``client_secret_basic`` (RFC 6749 §2.3.1, with
form-urlencoded id and secret) or ``client_secret_post``.

Anything but a 200 with a JSON object of the right types is an IdP failure: fail closed
(:class:`IdpUnavailable`), never cached, never an allow.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Collection
from urllib.parse import quote_plus

import aiohttp

from .config import IdpConfig, client_secret
from .discovery import Discovery, DiscoveryError
from .errors import IdpUnavailable
from .metrics import Metrics
from .tls import IdpSession
from .token_info import MalformedTokenInfo, TokenInfo, token_info_from_claims

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 256 * 1024


class Introspector:
    def __init__(
        self, idp: IdpConfig, session: IdpSession, discovery: Discovery,
        extra_claims: Collection[str], metrics: Metrics,
    ) -> None:
        self._idp = idp
        self._session = session
        self._discovery = discovery
        self._extra = tuple(extra_claims)
        self._metrics = metrics
        self._form_base, self._headers = _client_auth(idp)

    async def verify(self, token: str) -> TokenInfo:
        """What the IdP says about ``token``; raises IdpUnavailable when it cannot say."""
        try:
            endpoint = (await self._discovery.get()).introspection
        except DiscoveryError as exc:
            self._metrics.idp_requests.labels("introspection", "discovery_failed").inc()
            raise IdpUnavailable(f"discovery: {exc}") from None
        if endpoint is None:
            raise IdpUnavailable("the IdP advertises no introspection endpoint")
        form = {**self._form_base, "token": token, "token_type_hint": "access_token"}
        started = time.perf_counter()
        result = "error"
        try:
            payload = await self._post(endpoint, form)
            info = token_info_from_claims(payload, self._extra)
            result = "active" if info.active else "inactive"
            return info
        except MalformedTokenInfo as exc:
            result = "malformed"
            raise IdpUnavailable(f"introspection answer: {exc}") from None
        except IdpUnavailable as exc:
            result = exc.detail.split(":", 1)[0]
            raise
        finally:
            self._metrics.idp_latency.labels("introspection").observe(time.perf_counter() - started)
            self._metrics.idp_requests.labels("introspection", result).inc()

    async def _post(self, endpoint: str, form: dict[str, str]) -> object:
        try:
            async with self._session.session.post(endpoint, data=form, headers=self._headers) as response:
                if response.status != 200:
                    raise IdpUnavailable(f"http_{response.status}: introspection answered {response.status}")
                ctype = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
                if ctype != "application/json" and not ctype.endswith("+json"):
                    raise IdpUnavailable(f"content_type: unexpected {ctype!r}")
                body = await response.content.read(MAX_BODY_BYTES + 1)
                if len(body) > MAX_BODY_BYTES:
                    raise IdpUnavailable("too_large: introspection answer too large")
        except TimeoutError:
            raise IdpUnavailable("timeout: no answer within idp.timeout") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise IdpUnavailable(f"tls: {exc.certificate_error}") from None
        except aiohttp.ClientSSLError as exc:
            raise IdpUnavailable(f"tls: {type(exc).__name__}") from None
        except aiohttp.ClientError as exc:
            raise IdpUnavailable(f"connection: {type(exc).__name__}") from None
        try:
            return json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: a deeply nested answer
            raise IdpUnavailable("garbage: introspection answer is not JSON") from None


def _client_auth(idp: IdpConfig) -> tuple[dict[str, str], dict[str, str]]:
    """Form fields and headers that authenticate us, per the configured method."""
    headers = {"Accept": "application/json"}
    if idp.auth_method == "tls_client_auth":
        return {"client_id": idp.client_id}, headers
    secret = client_secret(idp) or ""
    if idp.auth_method == "client_secret_post":
        return {"client_id": idp.client_id, "client_secret": secret}, headers
    # RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding.
    pair = f"{quote_plus(idp.client_id)}:{quote_plus(secret)}".encode()
    headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    return {}, headers
