"""One issuer, assembled from its table (``[idp]`` or ``[issuers.NAME]``): everything the sidecar
needs to reach that IdP and to say what its tokens are.

- the mutual-TLS session with keep-alive (tls.py) and the reload of its files (rotation.py);
- the endpoints, configured or discovered (discovery.py);
- the guard of every introspection: deadline, concurrency bound, retries, breaker (guard.py);
- the JWK Set, when tokens are validated locally or answers are signed (jwks.py);
- the check the registry calls (token_format.py chooses introspection or local RFC 9068
  validation per token), whose answers name this issuer.

Each issuer is self-contained: its own session, client credentials, CA, timeouts, breaker and
``name`` (the ``issuer`` label of its metrics; ``default`` for ``[idp]``). Built whole before
anything uses it; started (background discovery, JWK Set, file polling) and closed by the
registry (issuers.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable

from sidecar.config import Config, IdpConfig
from sidecar.core.token_info import TokenInfo
from sidecar.idp.discovery import Discovery
from sidecar.idp.failures import IdpError
from sidecar.idp.guard import IdpGuard
from sidecar.idp.introspection import Introspector
from sidecar.idp.jwks import Jwks
from sidecar.idp.rotation import CertificateWatcher
from sidecar.idp.tls import IdpSession
from sidecar.idp.token_format import Check, choose_verifier, local_jwt_enabled
from sidecar.support.background import Background
from sidecar.support.metrics import Metrics
from sidecar.support.retry import until_done

log = logging.getLogger(__name__)
# RFC 6749 §5.2: the IdP refused our client authentication (unknown client_id, wrong certificate
# or secret, or a client not allowed to introspect); a 400 may be a token's own fault.
CLIENT_REJECTED = 401
CLIENT_RECHECK = 10.0  # seconds between introspections of a random token while we are refused


class Issuer:
    def __init__(self, name: str, idp: IdpConfig, config: Config, metrics: Metrics) -> None:
        self.name = name
        self.idp = idp
        self.session = IdpSession(idp)
        self.discovery = Discovery(idp, self.session, metrics, name)
        self.cert_watcher = CertificateWatcher(idp, self.session, metrics)
        self.guard = IdpGuard(idp, metrics, name)
        local = local_jwt_enabled(config, name)
        # Also the keys that sign the issuer's Security Event Tokens (idp/security_events.py).
        self.jwks = Jwks(idp, self.session, self.discovery, metrics, issuer=name) \
            if local or idp.introspection_response != "json" or (config.events.enabled and idp.issuer) else None
        self.introspector = None if idp.token_format == "jwt" else Introspector(
            idp, self.session, self.discovery, extra_claims=config.kept_claims, metrics=metrics, guard=self.guard,
            keys=self.jwks, leeway=config.policy.leeway, issuer=name,
        )
        # The JWK Set may be there for signed introspection answers only: local JWT validation still
        # needs what RFC 9068 §4 requires (local_jwt_enabled).
        self._check: Check = choose_verifier(idp, config.kept_claims, self.introspector,
                                             self.jwks if local else None, self.discovery)
        self.client_rejected = False  # the IdP refused our client authentication (a 401)
        self._background = Background()

    async def verify(self, token: str) -> TokenInfo:
        """What this issuer says about ``token``, naming itself on the answer."""
        return await self._answer(self._check.verify(token))

    async def introspect(self, token: str) -> TokenInfo:
        """Introspection alone (an opaque token); the issuer must have an introspector."""
        assert self.introspector is not None
        return await self._answer(self.introspector.verify(token))

    async def _answer(self, asked: Awaitable[TokenInfo]) -> TokenInfo:
        """``asked``'s answer naming this issuer; a refusal of our client authentication is noted."""
        try:
            info = await asked
        except IdpError as exc:
            self._note(exc)
            raise
        self.client_rejected = False
        if not info.active:
            return info
        # An introspection answer need not carry iss (RFC 7662 §2.2); the issuer asked is the one that
        # vouched, so its identifier is the token's: what its revocation events are scoped by.
        iss = info.iss if info.iss is not None or not info.introspected else self.idp.issuer
        return dataclasses.replace(info, issuer=self.name, iss=iss)

    def _note(self, exc: IdpError) -> None:
        """A refusal of our client authentication: not ready until an introspection passes again."""
        if exc.idp_status == CLIENT_REJECTED and not self.client_rejected:
            log.error("the IdP refused our client authentication", extra={"issuer": self.name,
                                                                          "client_id": self.idp.client_id})
            self.client_rejected = True
            self._background.spawn(self._recheck_client())

    async def _recheck_client(self) -> None:
        """While refused: a random token's introspection every :data:`CLIENT_RECHECK` seconds."""
        assert self.introspector is not None
        while self.client_rejected:
            await asyncio.sleep(CLIENT_RECHECK)
            try:
                await self.introspector.probe(self.idp.timeout)
            except IdpError as exc:
                if exc.idp_status == CLIENT_REJECTED:
                    continue
            else:
                self.client_rejected = False

    def readiness(self) -> str | None:
        """Why this issuer cannot serve yet (a ``/readyz`` reason), or None when it can."""
        if self.cert_watcher.expired():
            return "client_certificate_expired"
        if self.idp.issuer and self.discovery.endpoints is None:
            return "discovery_pending"
        if self.jwks is not None and not self.jwks.ready:
            return "jwks_pending"
        if self.client_rejected:
            return "client_rejected"
        return None

    def start(self) -> None:
        """Resolve the endpoints and load the JWK Set in the background; poll the TLS files."""
        discovery, background = self.discovery, self._background
        background.spawn(until_done(lambda: discovery.endpoints is not None, discovery.get))
        background.spawn(self.cert_watcher.run())
        if self.jwks is not None:
            background.spawn(self.jwks.load_until_ready())

    async def close(self) -> None:
        await self._background.cancel()
        await self.guard.aclose()
        await self.session.aclose()

