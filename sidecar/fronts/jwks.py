"""``GET /.well-known/jwks.json`` on the admin port: the public keys of identity tokens as a JWK Set
(RFC 7517 §5), for upstreams (and Envoy's ``jwt_authn`` ``remote_jwks``) that verify them.

The bytes are serialized once per change of the set (core/identity_keys.py). ``Cache-Control``
allows half of ``identity.rotation_overlap``: a verifier that honours it always holds a new key
before the first token signed with it.
"""

from __future__ import annotations

from aiohttp import web

from sidecar.runtime import SIDECAR

PATH = "/.well-known/jwks.json"
CONTENT_TYPE = "application/jwk-set+json"


async def jwks(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR]
    keys = sidecar.decider.signing_keys
    assert keys is not None  # the route exists only with identity.key_file, which needs a restart
    max_age = int(sidecar.config.identity.rotation_overlap / 2)
    return web.Response(body=keys.jwks, headers={"Content-Type": CONTENT_TYPE,
                                                          "Cache-Control": f"max-age={max_age}"})
