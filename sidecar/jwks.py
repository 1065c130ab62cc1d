"""The issuer's signing keys: an RFC 7517 §5 JWK Set from the ``jwks_uri`` of RFC 8414 §2 /
OpenID Discovery, fetched over the same mutual-TLS session as introspection.

RFC 9068 §4: the resource server "MUST use the keys provided by the authorization server". Rules:

- The set is fetched on first use (and by :meth:`Jwks.load_until_ready` at start), shared by
  concurrent callers (single-flight) and used for ``idp.jwks_max_age`` seconds; after that the
  next use fetches it again. Keys are never used past that age (fail closed).
- A token naming an unknown ``kid`` triggers one refresh, at most once per
  ``idp.jwks_min_refresh_interval`` (so forged kids cannot cause a refresh storm); a refresh
  already in flight is joined, never duplicated.
- Only public signature keys are kept (RFC 7517 §4.2 ``use``, §4.3 ``key_ops``); symmetric
  (``oct``), private, unusable and RSA keys under 2048 bits are skipped.
- Anything that leaves no usable key (IdP down, non-200, wrong type, body over
  ``MAX_JWKS_BYTES``, no usable key) is :class:`IdpUnavailable`: 503, never an allow.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from .config import IdpConfig
from .discovery import Discovery, DiscoveryError
from .errors import IdpUnavailable
from .metrics import Metrics
from .tls import IdpSession

log = logging.getLogger(__name__)
MAX_JWKS_BYTES = 256 * 1024
MAX_KEYS = 64
MIN_RSA_BITS = 2048


class JwksError(ValueError):
    """The JWK Set document is not acceptable; the message says why."""


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """One public verification key: its ``kid``, the ``alg`` the JWK pins (if any), the key."""

    kid: str | None
    alg: str | None
    key: Any  # a cryptography public key object (RSA, EC, Ed25519, Ed448)


@dataclass(frozen=True, slots=True)
class KeySet:
    keys: tuple[VerifyKey, ...]

    def find(self, kid: str | None) -> tuple[VerifyKey, ...]:
        """The keys named ``kid``; every key when the token names none."""
        if kid is None:
            return self.keys
        return tuple(k for k in self.keys if k.kid == kid)


def parse_jwks(body: bytes) -> KeySet:
    """Pure: the usable public signature keys of a JWK Set document."""
    try:
        document = json.loads(body)
    except ValueError:
        raise JwksError("not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError("not a JWK Set (an object with a keys array)")
    if len(document["keys"]) > MAX_KEYS:
        raise JwksError(f"more than {MAX_KEYS} keys")
    keys = tuple(k for k in map(_verify_key, document["keys"]) if k is not None)
    if not keys:
        raise JwksError("no usable signature key")
    return KeySet(keys)


def _verify_key(jwk: object) -> VerifyKey | None:
    if not isinstance(jwk, dict) or jwk.get("kty") in (None, "oct") or "d" in jwk:
        return None  # symmetric or private material is never a verification key
    if jwk.get("use", "sig") != "sig":
        return None
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    kid, alg = jwk.get("kid"), jwk.get("alg")
    if not isinstance(kid, str | None) or not isinstance(alg, str | None):
        return None
    try:
        key = PyJWK(jwk).key
    except (PyJWTError, ValueError, TypeError):
        return None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        return None
    return VerifyKey(kid, alg, key)


def _retrieve(task: asyncio.Future[KeySet]) -> None:
    if not task.cancelled():
        task.exception()


class Jwks:
    """The cached key set of the configured issuer, refreshed as the module docstring says."""

    RETRY_AFTER = 1.0  # seconds between fetches after a failed one

    def __init__(
        self, idp: IdpConfig, session: IdpSession, discovery: Discovery, metrics: Metrics,
        *, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._discovery = discovery
        self._metrics = metrics
        self._clock = clock
        self._max_age = idp.jwks_max_age
        self._min_interval = idp.jwks_min_refresh_interval
        # Under `auto`, an IdP without a jwks_uri simply means: no local JWT validation.
        self._required = idp.token_format != "auto"
        self._keys: KeySet | None = None
        self._fetched_at = -1e18
        self._failed_at = -1e18
        self._kid_refresh_at = -1e18
        self._last_error: str | None = None
        self._absent = False
        self._pending: asyncio.Future[KeySet] | None = None
        self.retry_after = self.RETRY_AFTER

    @property
    def ready(self) -> bool:
        """The first load succeeded (or, under ``auto``, the IdP advertises no jwks_uri)."""
        return self._keys is not None or (self._absent and not self._required)

    async def keys_for(self, kid: str | None) -> Sequence[VerifyKey]:
        """The keys that may have signed a token naming ``kid``; empty when none (after at most
        one rate-limited refresh). Raises IdpUnavailable when no current key set can be had."""
        found = (await self._current()).find(kid)
        if found:
            return found
        if self._pending is None:
            now = self._clock()
            if now - self._kid_refresh_at < self._min_interval:
                if self._last_error is not None:
                    raise IdpUnavailable(f"jwks: refresh failed recently: {self._last_error}")
                return ()
            self._kid_refresh_at = now
            log.info("unknown kid: refreshing the JWK Set")
        return (await self._refresh()).find(kid)

    async def load_until_ready(self) -> None:
        """At start: load the key set in the background, retrying; readiness waits for it."""
        delay = 0.5
        while not self.ready:
            try:
                await self._current()
            except IdpUnavailable as exc:
                log.warning("JWK Set not loaded yet", extra={"error": exc.detail})
            if self.ready:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _current(self) -> KeySet:
        keys = self._keys
        if keys is not None and self._clock() - self._fetched_at < self._max_age:
            return keys
        if self._pending is None and self._clock() - self._failed_at < self.retry_after:
            raise IdpUnavailable(f"jwks: fetch failed recently: {self._last_error}")
        return await self._refresh()

    async def _refresh(self) -> KeySet:
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._fetch())
            self._pending.add_done_callback(_retrieve)
        return await asyncio.shield(self._pending)

    async def _fetch(self) -> KeySet:
        started = time.perf_counter()
        result = "error"
        try:
            keys = parse_jwks(await self._download(await self._uri()))
            result = "ok"
            self._keys, self._fetched_at, self._last_error = keys, self._clock(), None
            log.info("JWK Set loaded", extra={"keys": len(keys.keys)})
            return keys
        except JwksError as exc:
            result = "unusable"
            self._note_failure(f"unusable: {exc}")
            raise IdpUnavailable(f"jwks: unusable JWK Set: {exc}") from None
        except IdpUnavailable as exc:
            result = exc.detail.split(":", 1)[0]
            self._note_failure(exc.detail)
            raise
        finally:
            self._pending = None
            self._metrics.idp_latency.labels("jwks").observe(time.perf_counter() - started)
            self._metrics.idp_requests.labels("jwks", result).inc()

    def _note_failure(self, error: str) -> None:
        self._failed_at, self._last_error = self._clock(), error
        log.warning("JWK Set fetch failed", extra={"error": error})

    async def _uri(self) -> str:
        try:
            uri = (await self._discovery.get()).jwks_uri
        except DiscoveryError as exc:
            raise IdpUnavailable(f"discovery_failed: {exc}") from None
        if uri is None:
            self._absent = True
            raise IdpUnavailable("no_jwks_uri: the IdP advertises no jwks_uri")
        return uri

    async def _download(self, uri: str) -> bytes:
        try:
            async with self._session.session.get(uri, headers=_ACCEPT) as response:
                if response.status != 200:
                    raise IdpUnavailable(f"http_{response.status}: jwks_uri answered {response.status}")
                ctype = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
                if ctype != "application/json" and not ctype.endswith("+json"):
                    raise IdpUnavailable(f"content_type: unexpected {ctype!r}")
                body = await response.content.read(MAX_JWKS_BYTES + 1)
        except TimeoutError:
            raise IdpUnavailable("timeout: no JWK Set within idp.timeout") from None
        except aiohttp.ClientSSLError as exc:
            raise IdpUnavailable(f"tls: {type(exc).__name__}") from None
        except aiohttp.ClientError as exc:
            raise IdpUnavailable(f"connection: {type(exc).__name__}") from None
        if len(body) > MAX_JWKS_BYTES:
            raise IdpUnavailable(f"too_large: JWK Set over {MAX_JWKS_BYTES} bytes")
        return body


_ACCEPT: Mapping[str, str] = {"Accept": "application/jwk-set+json, application/json"}
