"""A small development IdP for the demo and the tests: mutual TLS, certificate-bound tokens.

It is not an authorization server to deploy. It implements just enough of RFC 6749 (client
credentials), RFC 7662 (introspection), RFC 7009 (revocation), RFC 8414 / OpenID discovery and
RFC 8705 (``tls_client_auth``, ``cnf.x5t#S256`` bound tokens, ``mtls_endpoint_aliases``) to
exercise the sidecar over real TLS. Clients are identified by their certificate's common name.
With a signing key it also serves a JWK Set (RFC 7517) and mints RFC 9068 ``at+jwt`` access
tokens, which, like a real provider's, it does not introspect.
"""

from __future__ import annotations

import secrets
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import get_default_algorithms
from multidict import MultiDictProxy

from sidecar.core.client_cert import thumbprint


@dataclass
class Client:
    client_id: str
    scope: str = "read"
    bound: bool = True  # issue certificate-bound tokens (RFC 8705 §3)
    may_introspect: bool = False
    jwt_access_tokens: bool = False  # /token issues RFC 9068 at+jwt tokens (needs a signing key)


@dataclass(frozen=True)
class SigningKey:
    """A key the IdP signs JWT access tokens with; its public half is in the JWK Set."""

    kid: str
    alg: str
    private_key: Any = field(repr=False)

    @classmethod
    def generate(cls, alg: str = "ES256", kid: str | None = None) -> SigningKey:
        private = rsa.generate_private_key(65537, 2048) if alg[:2] in ("RS", "PS") else (
            ec.generate_private_key(ec.SECP256R1()))
        return cls(kid or secrets.token_hex(4), alg, private)

    def public_jwk(self) -> dict[str, Any]:
        jwk = get_default_algorithms()[self.alg].to_jwk(self.private_key.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.alg}


@dataclass
class DevIdp:
    issuer: str = "https://127.0.0.1"
    clients: dict[str, Client] = field(default_factory=dict)
    token_lifetime: int = 300
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    introspection_calls: int = 0
    signing_keys: list[SigningKey] = field(default_factory=list)  # the last one signs

    def add_client(self, client: Client) -> None:
        self.clients[client.client_id] = client

    def add_signing_key(self, alg: str = "ES256", kid: str | None = None) -> SigningKey:
        """Rotate: a new key signs from now on; the older ones stay in the JWK Set."""
        key = SigningKey.generate(alg, kid)
        self.signing_keys.append(key)
        return key

    def mint_jwt(self, client_id: str, *, cnf: str | None = None, scope: str | None = None,
                 lifetime: int | None = None, aud: str | list[str] = "api", key: SigningKey | None = None,
                 header: dict[str, Any] | None = None, **claims: Any) -> str:
        """An RFC 9068 §2 JWT access token signed with ``key`` (default: the current key)."""
        key = key or self.signing_keys[-1]
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer, "sub": client_id, "client_id": client_id, "aud": aud, "iat": now,
            "exp": now + (lifetime or self.token_lifetime), "jti": secrets.token_hex(8),
            "scope": scope or self.clients[client_id].scope, **claims,
        }
        if cnf:
            payload["cnf"] = {"x5t#S256": cnf}
        return jwt.encode(payload, key.private_key, algorithm=key.alg,
                          headers={"typ": "at+jwt", "kid": key.kid, **(header or {})})

    def mint(self, client_id: str, *, cnf: str | None = None, scope: str | None = None,
             lifetime: int | None = None, **claims: Any) -> str:
        """Register a token directly (tests); the same record /token would create."""
        now = int(time.time())
        token = secrets.token_urlsafe(32)
        record: dict[str, Any] = {
            "active": True, "client_id": client_id, "scope": scope or self.clients[client_id].scope,
            "token_type": "Bearer", "iat": now, "exp": now + (lifetime or self.token_lifetime),
            "iss": self.issuer, "sub": client_id, "jti": secrets.token_hex(8), **claims,
        }
        if cnf:
            record["cnf"] = {"x5t#S256": cnf}
        self.tokens[token] = record
        return token

    def app(self) -> web.Application:
        app = web.Application()
        app[DEV_IDP] = self
        app.router.add_get("/.well-known/openid-configuration", _metadata)
        app.router.add_get("/.well-known/oauth-authorization-server", _metadata)
        app.router.add_post("/token", _token)
        app.router.add_post("/introspect", _introspect)
        app.router.add_post("/revoke", _revoke)
        app.router.add_get("/jwks", _jwks)
        return app

    def metadata(self) -> dict[str, Any]:
        jwks = {"jwks_uri": f"{self.issuer}/jwks"} if self.signing_keys else {}
        return {
            **jwks,
            "issuer": self.issuer,
            "token_endpoint": f"{self.issuer}/token",
            "introspection_endpoint": f"{self.issuer}/introspect",
            "revocation_endpoint": f"{self.issuer}/revoke",
            "token_endpoint_auth_methods_supported": ["tls_client_auth"],
            "introspection_endpoint_auth_methods_supported": ["tls_client_auth"],
            "tls_client_certificate_bound_access_tokens": True,
            "mtls_endpoint_aliases": {
                "token_endpoint": f"{self.issuer}/token",
                "introspection_endpoint": f"{self.issuer}/introspect",
                "revocation_endpoint": f"{self.issuer}/revoke",
            },
        }


DEV_IDP = web.AppKey("dev_idp", DevIdp)


def server_context(cert_file: Path, key_file: Path, ca_file: Path) -> ssl.SSLContext:
    """TLS server that asks for a client certificate and verifies it against ``ca_file``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_file))
    context.load_cert_chain(cert_file, key_file)
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


def _peer(request: web.Request) -> tuple[str | None, str | None]:
    """(common name, x5t#S256) of the verified client certificate, if one was presented."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if ssl_object is None or not der:
        return None, None
    subject = dict(item[0] for item in ssl_object.getpeercert()["subject"])
    return subject.get("commonName"), thumbprint(der)


async def _authenticate(request: web.Request) -> tuple[Client, str, MultiDictProxy[Any]]:
    """RFC 8705 §2.1 tls_client_auth: the certificate's CN must be the client_id in the form."""
    idp = request.app[DEV_IDP]
    form = await request.post()
    client_id = str(form.get("client_id", ""))
    common_name, x5t = _peer(request)
    client = idp.clients.get(client_id)
    if client is None or x5t is None or common_name != client_id:
        raise web.HTTPUnauthorized(
            text='{"error":"invalid_client"}', content_type="application/json",
            headers={"WWW-Authenticate": 'Basic realm="dev-idp"'},
        )
    return client, x5t, form


async def _metadata(request: web.Request) -> web.Response:
    return web.json_response(request.app[DEV_IDP].metadata())


async def _token(request: web.Request) -> web.Response:
    idp = request.app[DEV_IDP]
    client, x5t, form = await _authenticate(request)
    if form.get("grant_type") != "client_credentials":
        return web.json_response({"error": "unsupported_grant_type"}, status=400)
    scope = str(form.get("scope") or client.scope)
    mint = idp.mint_jwt if client.jwt_access_tokens and idp.signing_keys else idp.mint
    token = mint(client.client_id, cnf=x5t if client.bound else None, scope=scope)
    return web.json_response(
        {"access_token": token, "token_type": "Bearer", "expires_in": idp.token_lifetime, "scope": scope},
        headers={"Cache-Control": "no-store"},
    )


async def _introspect(request: web.Request) -> web.Response:
    idp = request.app[DEV_IDP]
    client, _, form = await _authenticate(request)
    if not client.may_introspect:
        return web.json_response({"error": "invalid_client"}, status=401)
    idp.introspection_calls += 1
    record = idp.tokens.get(str(form.get("token", "")))
    if record is None or record["exp"] <= time.time():
        return web.json_response({"active": False})
    return web.json_response(record)


async def _jwks(request: web.Request) -> web.Response:
    return web.json_response({"keys": [k.public_jwk() for k in request.app[DEV_IDP].signing_keys]})


async def _revoke(request: web.Request) -> web.Response:
    idp = request.app[DEV_IDP]
    await _authenticate(request)
    form = await request.post()
    idp.tokens.pop(str(form.get("token", "")), None)
    return web.Response(status=200)
