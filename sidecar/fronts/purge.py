"""The admin purge endpoint: drop cached answers when a token is revoked (RFC 7009 events).

``POST /purge`` on the admin port only, with ``Authorization: Bearer <server.admin_secret>``
(RFC 6750 §2.1 syntax; compared in constant time over SHA-256 digests, so neither the content nor
the length of the secret leaks through timing). A JSON body names what to drop:

- ``{"token": "<access token>"}``: that token's entry (the token is hashed at once, never logged);
- ``{"token_hash": "<12 hex>"}``: every entry with that ``token_hash`` (the value in the logs);
- ``{"all": true}``: the whole cache;
- ``{"sub": "<subject>"}`` (optionally with ``"iss"``), ``{"email": "…"}``, ``{"client_id": "…"}``,
  ``{"jti": "…"}``: a **revocation**, as a security event makes it (docs/events.md): every answer
  it names is purged (found through the cache's index), and tokens it names issued until now are
  refused when they come back, from the IdP, Redis or a locally validated JWT, for
  ``events.remember``.

The answer is ``{"purged": <entries dropped>}``. Without a configured secret there is no route.
In a fleet (``fleet.enabled``) the purge also leaves Redis and is published to every replica;
the answer then says ``"fleet": true``, or ``false`` when Redis failed (purge again).
A stale-if-error copy is purged along with the entry, so a revoked token is never served stale.

Only peers in ``server.purge_peers`` are heard (403 otherwise). The right secret is always
served; wrong ones are rate-limited and lock their peer's further wrong attempts out for a
growing time (429 with Retry-After): see purge_guard.py. The body must arrive within
``server.header_timeout``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import time
from dataclasses import dataclass

from aiohttp import web

from sidecar.core.extract import TrustedProxies
from sidecar.core.purges import Purge
from sidecar.core.revocation import MAX_VALUE, Selector
from sidecar.fronts.purge_guard import PurgeGuard, retry_after
from sidecar.runtime import SIDECAR
from sidecar.support.body import BodyTooLarge, read_bounded
from sidecar.support.logs import token_hash

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 16 * 1024
_TOKEN_HASH = re.compile(r"^[0-9a-f]{12}$")
ADMIN_SECRET_DIGEST = web.AppKey("admin_secret_digest", bytes)
ONE_OF = ('give exactly one of "token", "token_hash" (12 hex), "all": true, "sub" (and "iss"), "email", '
          '"client_id", "jti"')
SELECTORS = ("sub", "email", "client_id", "jti")


def _selector(body: dict[str, object]) -> Selector | None:
    """A revocation selector (``sub`` with an optional ``iss``, ``email``, ``client_id``, ``jti``)."""
    named = [k for k in SELECTORS if k in body]
    allowed = {*named, "iss"} if named == ["sub"] else set(named)
    if len(named) != 1 or not set(body) <= allowed:  # "iss" is optional beside "sub"
        return None
    [kind] = named
    value, iss = body[kind], body.get("iss")
    if not isinstance(value, str) or not 0 < len(value) <= MAX_VALUE or (iss is not None and not isinstance(iss, str)):
        return None
    return Selector(kind, value, iss)  # type: ignore[arg-type]


@dataclass
class PurgeAccess:
    """Who may purge (by peer address), how often, and how long a body may take to arrive."""

    peers: TrustedProxies
    guard: PurgeGuard
    body_timeout: float


PURGE_ACCESS = web.AppKey("purge_access", PurgeAccess)


def secret_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def authorized(request: web.Request, expected: bytes) -> bool:
    """The request carries ``Bearer <admin secret>``; constant time in the secret."""
    values = request.headers.getall("Authorization", [])
    if len(values) != 1:
        return False
    scheme, _, presented = values[0].partition(" ")
    presented = presented.strip()
    ok_scheme = scheme.lower() == "bearer"
    return hmac.compare_digest(secret_digest(presented), expected) and ok_scheme and bool(presented)


def _unauthorized() -> web.Response:
    return web.json_response({"error": "invalid_token"}, status=401,
                             headers={"WWW-Authenticate": 'Bearer realm="admin", error="invalid_token"'})


def _bad(message: str) -> web.Response:
    return web.json_response({"error": "invalid_request", "error_description": message}, status=400)


def _refused(access: PurgeAccess, peer: str) -> web.Response:
    """A wrong secret: 429 while its peer is locked out or the bucket is empty, else 401 (and a
    longer lockout)."""
    wait = access.guard.wait(peer)
    if wait:
        if count := access.guard.quiet("rate_limited"):
            log.warning("purge refused", extra={"reason": "rate_limited", "peer": peer, "count": count,
                                                "retry_after": round(wait, 3)})
        return web.json_response({"error": "too_many_requests"}, status=429,
                                 headers={"Retry-After": retry_after(wait)})
    lockout = access.guard.failed(peer)
    log.warning("purge refused", extra={"reason": "admin_unauthorized", "peer": peer,
                                        "failures": access.guard.failures(peer), "locked_for": lockout})
    return _unauthorized()


async def purge(request: web.Request) -> web.Response:
    access = request.app[PURGE_ACCESS]
    peer = request.remote or ""
    if peer not in access.peers:
        if count := access.guard.quiet("peer_not_allowed"):
            log.warning("purge refused", extra={"reason": "peer_not_allowed", "peer": peer, "count": count})
        return web.json_response({"error": "forbidden"}, status=403)
    if not authorized(request, request.app[ADMIN_SECRET_DIGEST]):
        return _refused(access, peer)
    try:
        async with asyncio.timeout(access.body_timeout):
            raw = await read_bounded(request.content, MAX_BODY_BYTES, request.content_length)
    except BodyTooLarge:
        return _bad("body too large")
    except TimeoutError:
        return _bad("body too slow")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays
        return _bad("body must be a JSON object")
    sidecar = request.app[SIDECAR]
    if isinstance(body, dict) and (selector := _selector(body)) is not None:
        count, told = await sidecar.revoke([selector], time.time())
        revoked: dict[str, object] = {"purged": count, **({} if told is None else {"fleet": told})}
        log.warning("purge", extra={"by": selector.kind, **revoked})
        return web.json_response(revoked)
    if not isinstance(body, dict) or len(body) != 1:
        return _bad(ONE_OF)
    [(what, value)] = body.items()
    if what == "token" and isinstance(value, str) and value:
        hashed, dropped = token_hash(value), Purge.token(sidecar.decider.cache.key(value))
    elif what == "token_hash" and isinstance(value, str) and _TOKEN_HASH.match(value):
        hashed, dropped = value, Purge.hash(value)
    elif what == "all" and value is True:
        hashed, dropped = "*", Purge.everything()
    else:
        return _bad(ONE_OF)
    purged, shared = await sidecar.purge(dropped)
    answer: dict[str, object] = {"purged": purged}
    if shared is not None:
        answer["fleet"] = shared
    log.warning("purge", extra={"by": what, "token": hashed, **answer})
    return web.json_response(answer)
