"""One issuer, assembled from ``[idp]``: everything the sidecar needs to reach that IdP and to
say what its tokens are.

- the mutual-TLS session with keep-alive (tls.py) and the reload of its files (rotation.py);
- the endpoints, configured or discovered (discovery.py);
- the guard of every introspection: deadline, concurrency bound, retries, breaker (guard.py);
- the JWK Set, when tokens are validated locally or answers are signed (jwks.py);
- the :class:`~sidecar.core.ports.Verifier` the decision calls (token_format.py chooses
  introspection or local RFC 9068 validation per token).

Built whole before anything uses it; started (background discovery, JWK Set, file polling) and
closed by the runtime.
"""

from __future__ import annotations

from collections.abc import Hashable

from sidecar.config import Config
from sidecar.core.ports import Verifier
from sidecar.idp.discovery import Discovery
from sidecar.idp.guard import IdpGuard
from sidecar.idp.introspection import Introspector
from sidecar.idp.jwks import Jwks
from sidecar.idp.rotation import CertificateWatcher
from sidecar.idp.tls import IdpSession
from sidecar.idp.token_format import choose_verifier, local_jwt_enabled
from sidecar.support.background import Background
from sidecar.support.metrics import Metrics
from sidecar.support.retry import until_done

NAME = "default"  # the issuer label of the IdP metrics (one issuer today)


def answer_inputs(config: Config) -> Hashable:
    """Everything of ``config`` an issuer's answers depend on (what :class:`Issuer` and its verifiers
    read): equal for two configurations, one issuer serves both and its cached answers stay valid."""
    p = config.policy
    return config.idp, config.kept_claims, p.leeway, p.audiences, p.allowed_issuers


class Issuer:
    def __init__(self, config: Config, metrics: Metrics) -> None:
        idp = config.idp
        self._config = config
        self.session = IdpSession(idp)
        self.discovery = Discovery(idp, self.session, metrics, NAME)
        self.cert_watcher = CertificateWatcher(idp, self.session, metrics)
        self.guard = IdpGuard(idp, metrics)
        local = local_jwt_enabled(config)
        self.jwks = Jwks(idp, self.session, self.discovery, metrics, issuer=NAME) \
            if local or idp.introspection_response != "json" else None
        introspector = None if idp.token_format == "jwt" else Introspector(
            idp, self.session, self.discovery, extra_claims=config.kept_claims, metrics=metrics, guard=self.guard,
            keys=self.jwks, leeway=config.policy.leeway, issuer=NAME,
        )
        # The JWK Set may be there for signed introspection answers only: local JWT validation still
        # needs what RFC 9068 §4 requires (local_jwt_enabled).
        self.verifier: Verifier = choose_verifier(config, introspector, self.jwks if local else None, self.discovery)
        self._background = Background()

    def readiness(self) -> str | None:
        """Why this issuer cannot serve yet (a ``/readyz`` reason), or None when it can."""
        if self.cert_watcher.expired():
            return "client_certificate_expired"
        if self._config.idp.issuer and self.discovery.endpoints is None:
            return "discovery_pending"
        if self.jwks is not None and not self.jwks.ready:
            return "jwks_pending"
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
