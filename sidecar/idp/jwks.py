"""The issuer's signing keys: an RFC 7517 §5 JWK Set from the ``jwks_uri`` of RFC 8414 §2 /
OpenID Discovery, fetched over the same mutual-TLS session as introspection.

RFC 9068 §4: the resource server "MUST use the keys provided by the authorization server". Rules:

- The set is fetched on first use (and by :meth:`Jwks.load_until_ready` at start), shared by
  concurrent callers (single-flight) and used for ``idp.jwks_max_age`` seconds; after that the
  next use fetches it again. Keys are never used past that age (fail closed).
- A token naming an unknown ``kid`` triggers one refresh, at most once per
  ``idp.jwks_min_refresh_interval`` (so forged kids cannot cause a refresh storm); a refresh
  already in flight is joined, never duplicated.
- Only public signature keys are kept (jwk_set.py).
- Anything that leaves no usable key (IdP down, non-200, wrong type, body over
  ``MAX_JWKS_BYTES``, no usable key) is :class:`IdpError`: 503, never an allow.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from sidecar.config import IdpConfig
from sidecar.idp.discovery import Discovery
from sidecar.idp.failures import IdpError, IdpFailure
from sidecar.idp.fetch import fetch_json
from sidecar.idp.jwk_set import JwksError, KeySet, VerifyKey, keys_from_document, parse_jwks
from sidecar.idp.tls import IdpSession
from sidecar.support import tracing
from sidecar.support.metrics import Metrics
from sidecar.support.retry import until_done
from sidecar.support.singleflight import SingleFlight

log = logging.getLogger(__name__)
MAX_JWKS_BYTES = 256 * 1024


_SET = "jwks"  # the single-flight key of the one key set


class Jwks:
    """The cached key set of the configured issuer, refreshed as the module docstring says."""

    RETRY_AFTER = 1.0  # seconds between fetches after a failed one (tests shorten it)

    def __init__(
        self, idp: IdpConfig, session: IdpSession, discovery: Discovery, metrics: Metrics,
        *, clock: Callable[[], float] = time.monotonic, issuer: str = "default",
    ) -> None:
        self._session = session
        self._discovery = discovery
        self._configured_uri = idp.jwks_uri
        self._metrics = metrics
        self._latency = metrics.idp_latency.labels(issuer, "jwks")
        self._issuer = issuer
        self._clock = clock
        self._max_age = idp.jwks_max_age
        self._min_interval = idp.jwks_min_refresh_interval
        # Under `auto`, an IdP without a jwks_uri simply means: no local JWT validation.
        self._required = idp.token_format != "auto" or idp.introspection_response != "json"
        self._keys: KeySet | None = None
        self._fetched_at = -1e18
        self._failed_at = -1e18
        self._kid_refresh_at = -1e18
        self._last_failure: IdpError | None = None
        self._absent = False
        self._flight: SingleFlight[str, KeySet] = SingleFlight()  # one fetch at a time, shared

    @property
    def ready(self) -> bool:
        """The first load succeeded (or, under ``auto``, the IdP advertises no jwks_uri)."""
        return self._keys is not None or (self._absent and not self._required)

    async def keys_for(self, kid: str | None) -> Sequence[VerifyKey]:
        """The keys that may have signed a token naming ``kid``; empty when none (after at most
        one rate-limited refresh). Raises IdpError when no current key set can be had."""
        fetched_before = self._fetched_at
        found = (await self._current()).find(kid)
        if found or self._fetched_at != fetched_before:
            return found  # a set fetched while this token waited is as fresh as a refresh
        if _SET not in self._flight:
            now = self._clock()
            if now - self._kid_refresh_at < self._min_interval:
                if self._last_failure is not None:
                    raise _again(self._last_failure)
                return ()
            self._kid_refresh_at = now
            log.info("unknown kid: refreshing the JWK Set")
        return (await self._refresh()).find(kid)

    async def load_until_ready(self) -> None:
        """At start: load the key set in the background, retrying; readiness waits for it."""
        await until_done(lambda: self.ready, self._current)  # _fetch logs each failure

    async def _current(self) -> KeySet:
        keys = self._keys
        if keys is not None and self._clock() - self._fetched_at < self._max_age:
            return keys
        last = self._last_failure
        if _SET not in self._flight and last is not None and self._clock() - self._failed_at < self.RETRY_AFTER:
            raise _again(last)
        return await self._refresh()

    async def _refresh(self) -> KeySet:
        return (await self._flight.run(_SET, self._fetch))[0]

    async def _fetch(self) -> KeySet:
        started = time.perf_counter()
        result = "error"
        span = tracing.child("idp jwks", **{"sidecar.issuer": self._issuer, "sidecar.idp.endpoint": "jwks"})
        try:
            keys = keys_from_document(await self._download(await self._uri()))
            result = "ok"
            self._keys, self._fetched_at, self._last_failure = keys, self._clock(), None
            log.info("JWK Set loaded", extra={"keys": len(keys.keys)})
            return keys
        except JwksError as exc:
            result = IdpFailure.UNUSABLE.value
            failure = IdpError(IdpFailure.UNUSABLE, f"JWK Set: {exc}")
            self._note_failure(failure)
            raise failure from None
        except IdpError as exc:
            result = exc.result
            self._note_failure(exc)
            raise
        finally:
            self._latency.observe(time.perf_counter() - started)
            self._metrics.idp_requests.labels("jwks", result).inc()
            span.end(result, error=result != "ok")

    def _note_failure(self, failure: IdpError) -> None:
        self._failed_at, self._last_failure = self._clock(), failure
        expected = self._absent and not self._required  # auto: this IdP has no JWK Set
        log.log(logging.INFO if expected else logging.WARNING, "JWK Set fetch failed",
                extra={"error": failure.detail})

    async def _uri(self) -> str:
        if self._configured_uri:  # explicit wins; no need for the discovery document
            return self._configured_uri
        uri = (await self._discovery.get()).jwks_uri  # DiscoveryError: discovery_failed
        if uri is None:
            self._absent = True
            raise IdpError(IdpFailure.NO_JWKS_URI, "the IdP advertises no jwks_uri")
        return uri

    async def _download(self, uri: str) -> object:
        """The decoded JWK Set document."""
        return await fetch_json(self._session.session, "GET", uri, what="JWK Set", max_bytes=MAX_JWKS_BYTES,
                                headers=_ACCEPT)


def _again(failure: IdpError) -> IdpError:
    """A recent failure, reported again (same kind) without asking the IdP."""
    return IdpError(failure.kind, "JWK Set fetch failed recently", status=failure.idp_status,
                          retry_after=failure.retry_after)


_ACCEPT: Mapping[str, str] = {"Accept": "application/jwk-set+json, application/json"}


__all__ = ["MAX_JWKS_BYTES", "Jwks", "JwksError", "KeySet", "VerifyKey", "parse_jwks"]
