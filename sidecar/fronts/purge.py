"""The admin purge endpoint: drop cached answers when a token is revoked (RFC 7009 events).

``POST /purge`` on the admin port only, with ``Authorization: Bearer <server.admin_secret>``
(RFC 6750 §2.1 syntax; compared in constant time over SHA-256 digests, so neither the content nor
the length of the secret leaks through timing). A JSON body names what to drop:

- ``{"token": "<access token>"}``: that token's entry (the token is hashed at once, never logged);
- ``{"token_hash": "<12 hex>"}``: every entry with that ``token_hash`` (the value in the logs);
- ``{"all": true}``: the whole cache.

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
from dataclasses import dataclass

from aiohttp import web

from sidecar.core.extract import TrustedProxies
from sidecar.core.purges import Selector
from sidecar.fronts.purge_guard import PurgeGuard, retry_after
from sidecar.runtime import SIDECAR
from sidecar.support.body import BodyTooLarge, read_bounded
from sidecar.support.logs import token_hash

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 16 * 1024
_TOKEN_HASH = re.compile(r"^[0-9a-f]{12}$")
ADMIN_SECRET_DIGEST = web.AppKey("admin_secret_digest", bytes)


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
    if not isinstance(body, dict) or len(body) != 1:
        return _bad('give exactly one of "token", "token_hash", "all": true')
    [(what, value)] = body.items()
    if what == "token" and isinstance(value, str) and value:
        hashed, selector = token_hash(value), Selector.token(request.app[SIDECAR].decider.cache.key(value))
    elif what == "token_hash" and isinstance(value, str) and _TOKEN_HASH.match(value):
        hashed, selector = value, Selector.hash(value)
    elif what == "all" and value is True:
        hashed, selector = "*", Selector.everything()
    else:
        return _bad('give exactly one of "token", "token_hash" (12 hex), "all": true')
    purged, shared = await request.app[SIDECAR].purge(selector)
    answer: dict[str, object] = {"purged": purged}
    if shared is not None:
        answer["fleet"] = shared
    log.warning("purge", extra={"by": what, "token": hashed, **answer})
    return web.json_response(answer)
