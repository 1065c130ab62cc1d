"""RFC 7662 token introspection over mutual TLS: the only code that asks the IdP about a token.

§2.1: POST ``application/x-www-form-urlencoded`` with ``token`` and ``token_type_hint``.
How we authenticate (RFC 8705 ``tls_client_auth`` and ``self_signed_tls_client_auth``, client
secrets, RFC 7523 ``private_key_jwt``): sidecar/idp/client_auth.py.

Anything but a 200 with a JSON object of the right types is an IdP failure: fail closed
(:class:`IdpError`, its ``kind`` says why and its ``result`` is the
``sidecar_idp_requests_total`` result label), never cached, never an allow. With an
:class:`~sidecar.idp.guard.IdpGuard`, every call runs under its deadline, concurrency bound,
retries and circuit breaker.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Collection, Mapping

from sidecar.config import IdpConfig
from sidecar.core.token_info import MalformedTokenInfo, TokenInfo, token_info_from_claims
from sidecar.idp.client_auth import ClientAuth
from sidecar.idp.discovery import Discovery, DiscoveryError
from sidecar.idp.failures import IdpError, IdpFailure
from sidecar.idp.fetch import decode_json, post_form
from sidecar.idp.guard import IdpGuard
from sidecar.idp.jwt_access_token import KeySource
from sidecar.idp.signed_introspection import MEDIA_TYPE, verify_signed_answer
from sidecar.idp.tls import IdpSession
from sidecar.support import tracing
from sidecar.support.metrics import Metrics

log = logging.getLogger(__name__)
# RFC 9701 §4: ask for the signed answer; "preferred" also takes plain JSON from an IdP without it.
SIGNED_ACCEPT = {"jwt_preferred": f"{MEDIA_TYPE}, application/json;q=0.5", "jwt_required": MEDIA_TYPE}
MAX_BODY_BYTES = 256 * 1024


class Introspector:
    """RFC 7662 §2 calls; with ``idp.introspection_response`` not ``json``, RFC 9701 signed answers."""

    def __init__(
        self, idp: IdpConfig, session: IdpSession, discovery: Discovery,
        extra_claims: Collection[str], metrics: Metrics, guard: IdpGuard | None = None,
        keys: KeySource | None = None, leeway: float = 5.0, issuer: str = "default",
    ) -> None:
        """``issuer``: the name the IdP latency histogram labels this issuer's calls with."""
        self._keys = keys  # the issuer's JWK Set, for signed answers
        self._leeway = leeway
        self._idp = idp
        self._session = session
        self._discovery = discovery
        self._extra = tuple(extra_claims)
        self._metrics = metrics
        self._latency = metrics.idp_latency.labels(issuer, "introspection")
        self._issuer = issuer
        self._auth = ClientAuth(idp)
        self._guard = guard
        if guard is not None:
            guard.set_probe(self.probe)

    async def probe(self, timeout: float | None = None) -> TokenInfo:
        """An unknown random token: any well-formed answer ({"active": false}) means the IdP works
        and accepts our client authentication (the breaker's probe, the readiness recheck)."""
        return await self._attempt(secrets.token_urlsafe(32), timeout, "probe")

    async def _answer(self, endpoint: str, form: dict[str, str], headers: Mapping[str, str],
                      timeout: float | None) -> object:
        """The RFC 7662 object: as JSON, or inside a verified RFC 9701 JWT (fail closed otherwise)."""
        mode = self._idp.introspection_response
        if mode != "json":
            headers = {**headers, "Accept": SIGNED_ACCEPT[mode]}
        idp = self._idp
        ctype, body = await post_form(
            self._session.poster, endpoint, what="introspection answer", form=form, max_bytes=MAX_BODY_BYTES,
            headers=headers, timeout=idp.timeout if timeout is None else timeout,
            connect_timeout=idp.connect_timeout, also=(MEDIA_TYPE,) if mode != "json" else ())
        if ctype == MEDIA_TYPE and self._keys is not None:
            return await verify_signed_answer(
                body.decode("ascii", "replace"), self._keys, issuer=self._idp.issuer, client_id=self._idp.client_id,
                algorithms=self._idp.jwt_algorithms, leeway=self._leeway)
        if mode == "jwt_required":
            raise IdpError(IdpFailure.CONTENT_TYPE, f"introspection answer: {ctype[:60]!r}, not signed "
                                                          "(idp.introspection_response = jwt_required)")
        return decode_json(body, "introspection answer")

    async def verify(self, token: str) -> TokenInfo:
        """What the IdP says about ``token``; raises IdpError when it cannot say."""
        if self._guard is None:
            return await self._attempt(token, None)
        return await self._guard.call(lambda timeout: self._attempt(token, timeout))

    async def _attempt(self, token: str, timeout: float | None, kind: str = "introspection") -> TokenInfo:
        """One introspection call; ``timeout``: the seconds it may take (None: the session's)."""
        try:
            endpoint = (await self._discovery.get()).introspection
        except DiscoveryError:
            self._metrics.idp_requests.labels(kind, IdpFailure.DISCOVERY_FAILED.value).inc()
            raise
        if endpoint is None:
            raise IdpError(IdpFailure.NO_ENDPOINT, "the IdP advertises no introspection endpoint")
        form, headers = self._auth.credentials(endpoint)
        form["token"] = token
        form["token_type_hint"] = "access_token"
        started = time.perf_counter()
        result = "error"
        span = tracing.child(f"idp {kind}", **{"sidecar.issuer": self._issuer, "sidecar.idp.endpoint": "introspection"})
        try:
            payload = await self._answer(endpoint, form, headers, timeout)
            info = token_info_from_claims(payload, self._extra)
            result = "active" if info.active else "inactive"
            return info
        except MalformedTokenInfo as exc:
            result = IdpFailure.MALFORMED.value
            raise IdpError(IdpFailure.MALFORMED, f"introspection answer: {exc}") from None
        except IdpError as exc:
            result = exc.result
            raise
        finally:
            self._latency.observe(time.perf_counter() - started)
            self._metrics.idp_requests.labels(kind, result).inc()
            span.end(result, error=result not in ("active", "inactive"))
