"""Where the IdP's endpoints are: configured, or discovered from the issuer.

OpenID Connect Discovery 1.0 (``/.well-known/openid-configuration``) first, then RFC 8414
(``/.well-known/oauth-authorization-server``, inserted before the issuer's path). RFC 8414 §3.3:
the ``issuer`` in the metadata MUST equal the configured issuer. RFC 8705 §5: a client using
mutual TLS uses ``mtls_endpoint_aliases`` where the server lists them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from sidecar.config import IdpConfig
from sidecar.idp.failures import IdpError, IdpFailure
from sidecar.idp.fetch import fetch_json
from sidecar.idp.tls import IdpSession
from sidecar.support import tracing
from sidecar.support.metrics import Metrics
from sidecar.support.singleflight import SingleFlight

log = logging.getLogger(__name__)
MAX_METADATA_BYTES = 256 * 1024


class DiscoveryError(IdpError):
    """The metadata could not be fetched or is not acceptable: ``discovery_failed``, a 503."""

    def __init__(self, detail: str) -> None:
        super().__init__(IdpFailure.DISCOVERY_FAILED, detail)
        self.message = detail


@dataclass(frozen=True)
class Endpoints:
    introspection: str | None
    jwks_uri: str | None
    issuer: str | None


def metadata_urls(issuer: str) -> list[str]:
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    openid = urlunsplit((parts.scheme, parts.netloc, f"{path}/.well-known/openid-configuration", "", ""))
    rfc8414 = urlunsplit(
        (parts.scheme, parts.netloc, f"/.well-known/oauth-authorization-server{path}", "", "")
    )
    return [openid, rfc8414]


def endpoints_from_metadata(metadata: Mapping[str, Any], idp: IdpConfig) -> Endpoints:
    """Pick the endpoints from metadata; configured values win over discovered ones."""
    found = metadata.get("issuer")
    if found != idp.issuer:
        if isinstance(found, str) and idp.issuer and found.rstrip("/") == idp.issuer.rstrip("/"):
            raise DiscoveryError(f"metadata issuer {found!r} differs from the configured issuer by a trailing slash: "
                                 "set the issuer exactly as the IdP writes it")
        raise DiscoveryError(f"metadata issuer {str(found)[:200]!r} != configured issuer {idp.issuer!r}")
    aliases = metadata.get("mtls_endpoint_aliases")
    aliases = aliases if isinstance(aliases, Mapping) else {}
    use_mtls = idp.auth_method in ("tls_client_auth", "self_signed_tls_client_auth")
    introspection = idp.introspection_endpoint or (
        (use_mtls and aliases.get("introspection_endpoint")) or metadata.get("introspection_endpoint")
    )
    jwks = idp.jwks_uri or metadata.get("jwks_uri")
    for name, url in (("introspection_endpoint", introspection), ("jwks_uri", jwks)):
        if url is not None and (not isinstance(url, str) or not url.startswith("https://")):
            raise DiscoveryError(f"metadata {name} is not an https URL")
    return Endpoints(introspection=introspection, jwks_uri=jwks, issuer=idp.issuer)


async def discover(session: aiohttp.ClientSession, idp: IdpConfig) -> Endpoints:
    """Endpoints from configuration, or from the issuer's metadata documents."""
    if not idp.issuer:
        return Endpoints(idp.introspection_endpoint, idp.jwks_uri, None)
    errors: list[str] = []
    for url in metadata_urls(idp.issuer):
        try:
            metadata = await fetch_json(session, "GET", url, what=url, max_bytes=MAX_METADATA_BYTES,
                                        headers=_ACCEPT)
        except IdpError as exc:
            errors.append(exc.detail)
            continue
        if not isinstance(metadata, dict):
            errors.append(f"malformed: {url}: not a JSON object")
            continue
        return endpoints_from_metadata(metadata, idp)
    raise DiscoveryError("; ".join(errors))


_ACCEPT: Mapping[str, str] = {"Accept": "application/json"}


class Discovery:
    """Resolves the endpoints once, shared by concurrent callers, retrying after a pause."""

    RETRY_AFTER = 1.0

    def __init__(self, idp: IdpConfig, session: IdpSession, metrics: Metrics | None = None,
                 issuer: str = "default") -> None:
        """``metrics``, ``issuer``: the IdP latency histogram and this issuer's label in it."""
        self._idp = idp
        self._session = session
        self._latency = None if metrics is None else metrics.idp_latency.labels(issuer, "discovery")
        self._issuer = issuer
        self._endpoints: Endpoints | None = None
        self._flight: SingleFlight[str, Endpoints] = SingleFlight()  # concurrent callers share one fetch
        self._failed_at = -1e9
        self._last_error = ""

    @property
    def endpoints(self) -> Endpoints | None:
        return self._endpoints

    async def get(self) -> Endpoints:
        if self._endpoints is not None:
            return self._endpoints
        if "metadata" not in self._flight and time.monotonic() - self._failed_at < self.RETRY_AFTER:
            raise DiscoveryError(f"discovery failed recently: {self._last_error}")
        return (await self._flight.run("metadata", self._resolve))[0]

    async def _resolve(self) -> Endpoints:
        started = time.perf_counter()
        span = tracing.child("idp discovery", **{"sidecar.issuer": self._issuer, "sidecar.idp.endpoint": "discovery"})
        result = "error"
        try:
            self._endpoints = await discover(self._session.session, self._idp)
            result = "ok"
            log.info("endpoints resolved", extra={"introspection_endpoint": self._endpoints.introspection,
                                                  "jwks_uri": self._endpoints.jwks_uri})
            return self._endpoints
        except DiscoveryError as exc:
            result = exc.result
            self._failed_at = time.monotonic()
            self._last_error = exc.message
            log.warning("discovery failed", extra={"error": exc.message})
            raise
        finally:
            if self._latency is not None:
                self._latency.observe(time.perf_counter() - started)
            span.end(result, error=result != "ok")
