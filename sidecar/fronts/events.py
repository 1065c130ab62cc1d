"""``POST /security-events`` on the admin port: the RFC 8935 push receiver of Security Event Tokens
(docs/events.md). Only with ``events.enabled``.

RFC 8935 §2: the body is one SET (``Content-Type: application/secevent+jwt``). A SET that verifies
(idp/security_events.py: the configured issuer's signature, ``aud``, ``iat`` window), whose
``jti`` was not received before (here, and in a fleet on any replica), is acted on — what it
revokes is purged on every replica and remembered (core/events.py, core/revocation.py) — and
answered **202** with no body (§2.2). Any other is answered **400** with ``{"err": …,
"description": …}`` (§2.3) and an RFC 8935 §2.4 code, and purges nothing. When the issuer's keys
cannot be had: 503 with ``Retry-After`` (the transmitter delivers again).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from aiohttp import web

from sidecar.core.errors import IdpUnavailable
from sidecar.core.events import SetRefused, revocations
from sidecar.core.replay import StoreFull
from sidecar.runtime import SIDECAR, Sidecar
from sidecar.support.body import BodyTooLarge, read_bounded

log = logging.getLogger(__name__)
PATH = "/security-events"
CONTENT_TYPE = "application/secevent+jwt"
MAX_BODY_BYTES = 64 * 1024


def _refused(err: str, description: str) -> web.Response:
    return web.json_response({"err": err, "description": description}, status=400)


async def receive(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR]
    peer = request.remote or ""
    if request.content_type != CONTENT_TYPE:
        return _refused("invalid_request", f"Content-Type must be {CONTENT_TYPE}")
    try:
        async with asyncio.timeout(sidecar.config.server.header_timeout):
            body = await read_bounded(request.content, MAX_BODY_BYTES, request.content_length)
        purged, fleet, jti = await _act(sidecar, body.decode("ascii").strip())
    except (BodyTooLarge, TimeoutError, UnicodeDecodeError):
        return _refused("invalid_request", "the body is not one SET")
    except SetRefused as refused:
        log.warning("security event refused", extra={"err": refused.err, "detail": refused.description,
                                                      "peer": peer})
        return _refused(refused.err, refused.description)
    except (IdpUnavailable, StoreFull) as exc:
        log.warning("security event not handled", extra={"error_type": type(exc).__name__, "peer": peer})
        return web.json_response({"err": "temporarily_unavailable"}, status=503, headers={"Retry-After": "1"})
    log.warning("security event", extra={"jti": jti[:64], "purged": purged, "fleet": fleet, "peer": peer})
    return web.Response(status=202)


async def _act(sidecar: Sidecar, compact: str) -> tuple[int, bool | None, str]:
    """Verify, de-duplicate by (iss, jti), revoke; (answers purged here, fleet told, jti)."""
    assert sidecar.events is not None  # the route exists only with events.enabled
    claims = await sidecar.events.verify(compact)
    selectors, at = revocations(claims, time.time(), sidecar.decider.cache.key)
    jti = claims["jti"]
    key = hashlib.sha256(f"set\0{claims['iss']}\0{jti}".encode()).digest()
    until = float(claims["iat"]) + sidecar.config.events.iat_window
    shared = sidecar.shared_event_jtis
    if not sidecar.event_jtis.claim(key, until) or (shared is not None and not await shared.claim(key, until)):
        raise SetRefused("invalid_request", "this jti was already received")
    if not selectors:
        return 0, None, jti
    purged, fleet = await sidecar.revoke(selectors, at)
    return purged, fleet, jti
