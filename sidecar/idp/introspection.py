"""RFC 7662 token introspection over mutual TLS: the only code that asks the IdP about a token.

§2.1: POST ``application/x-www-form-urlencoded`` with ``token`` and ``token_type_hint``.
RFC 8705 §2.1 ``tls_client_auth``: the client certificate authenticates us; ``client_id`` is
still sent in the form. For IdPs without mTLS, ``client_secret_basic`` (RFC 6749 §2.3.1, with
form-urlencoded id and secret) or ``client_secret_post``.

Anything but a 200 with a JSON object of the right types is an IdP failure: fail closed
(:class:`IdpUnavailable`), never cached, never an allow. The failure class (the text before the
first ``:`` of the detail) is the ``sidecar_idp_requests_total`` result label. With an
:class:`~sidecar.idp_guard.IdpGuard`, every call runs under its deadline, concurrency bound,
retries and circuit breaker.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import secrets
import socket
import time
from collections.abc import Collection
from email.utils import parsedate_to_datetime
from urllib.parse import quote_plus

import aiohttp

from sidecar.config import IdpConfig, client_secret
from sidecar.core.errors import IdpUnavailable
from sidecar.core.token_info import MalformedTokenInfo, TokenInfo, token_info_from_claims
from sidecar.idp.discovery import Discovery, DiscoveryError
from sidecar.idp.guard import MAX_RETRY_AFTER, IdpGuard
from sidecar.idp.tls import IdpSession
from sidecar.support.body import BodyTooLarge, read_bounded
from sidecar.support.metrics import Metrics

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 256 * 1024


class Introspector:
    def __init__(
        self, idp: IdpConfig, session: IdpSession, discovery: Discovery,
        extra_claims: Collection[str], metrics: Metrics, guard: IdpGuard | None = None,
    ) -> None:
        self._idp = idp
        self._session = session
        self._discovery = discovery
        self._extra = tuple(extra_claims)
        self._metrics = metrics
        self._form_base, self._headers = _client_auth(idp)
        self._guard = guard
        if guard is not None:
            # An unknown random token: any well-formed answer ({"active": false}) means the IdP works.
            guard.set_probe(lambda timeout: self._attempt(secrets.token_urlsafe(32), timeout, "probe"))

    async def verify(self, token: str) -> TokenInfo:
        """What the IdP says about ``token``; raises IdpUnavailable when it cannot say."""
        if self._guard is None:
            return await self._attempt(token, None)
        return await self._guard.call(lambda timeout: self._attempt(token, timeout))

    async def _attempt(self, token: str, timeout: float | None, kind: str = "introspection") -> TokenInfo:
        """One introspection call; ``timeout``: the seconds it may take (None: the session's)."""
        try:
            endpoint = (await self._discovery.get()).introspection
        except DiscoveryError as exc:
            self._metrics.idp_requests.labels(kind, "discovery_failed").inc()
            raise IdpUnavailable(f"discovery: {exc}") from None
        if endpoint is None:
            raise IdpUnavailable("no_endpoint: the IdP advertises no introspection endpoint")
        form = {**self._form_base, "token": token, "token_type_hint": "access_token"}
        started = time.perf_counter()
        result = "error"
        try:
            payload = await self._post(endpoint, form, timeout)
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
            self._metrics.idp_latency.labels(kind).observe(time.perf_counter() - started)
            self._metrics.idp_requests.labels(kind, result).inc()

    async def _post(self, endpoint: str, form: dict[str, str], timeout: float | None) -> object:
        session = self._session.session
        limits = session.timeout if timeout is None else aiohttp.ClientTimeout(
            total=timeout, sock_connect=min(self._idp.connect_timeout, timeout))
        try:
            async with session.post(endpoint, data=form, headers=self._headers, timeout=limits) as response:
                if response.status != 200:
                    raise IdpUnavailable(f"http_{response.status}: introspection answered {response.status}",
                                         retry_after=_retry_after(response.headers.get("Retry-After")))
                ctype = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
                if ctype != "application/json" and not ctype.endswith("+json"):
                    raise IdpUnavailable(f"content_type: unexpected {ctype!r}")
                body = await _read_body(response)
        except aiohttp.ClientError as exc:
            raise IdpUnavailable(f"{_failure_class(exc)}: {type(exc).__name__}: {exc}"[:300]) from None
        except TimeoutError:
            raise IdpUnavailable("timeout: no answer within idp.timeout") from None
        try:
            return json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: a deeply nested answer
            raise IdpUnavailable("garbage: introspection answer is not JSON") from None


async def _read_body(response: aiohttp.ClientResponse) -> bytes:
    try:
        return await read_bounded(response.content, MAX_BODY_BYTES, response.content_length)
    except BodyTooLarge:
        raise IdpUnavailable("too_large: introspection answer too large") from None


def _failure_class(exc: aiohttp.ClientError) -> str:
    """What went wrong, as the result label: where in the call it failed, and how."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connect_timeout"
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        code = getattr(exc.certificate_error, "verify_code", None)
        # X509_V_ERR_HOSTNAME_MISMATCH 62, _IP_ADDRESS_MISMATCH 64; _CERT_HAS_EXPIRED 10
        return {62: "tls_hostname", 64: "tls_hostname", 10: "tls_expired"}.get(code or 0, "tls_untrusted")
    if isinstance(exc, aiohttp.ClientSSLError):
        return "tls"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, socket.gaierror):
            return "dns"
        return "refused" if isinstance(exc.os_error, ConnectionRefusedError) else "connect_failed"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "truncated"
    if isinstance(exc, aiohttp.ClientOSError) and exc.errno == errno.ECONNRESET:
        return "reset"  # TLS 1.3: how a rejected client certificate usually shows
    return "connection"


def _retry_after(value: str | None) -> int:
    """RFC 9110 §10.2.3 Retry-After: delay-seconds or an HTTP-date; 1 when absent or unreadable."""
    if not value:
        return 1
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return 1
    return int(min(max(seconds, 1.0), MAX_RETRY_AFTER))


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
