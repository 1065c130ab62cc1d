"""``sidecar check-config --online``: every issuer contacted as the service would, each failure
reported with the key to fix and its cause.

Per issuer (each tenant of a multi-tenant one): its TLS files load; discovery resolves and names
the configured issuer exactly (a trailing slash is called out); the JWK Set is fetched and holds a
usable key; one introspection of a throw-away random token, with our client authentication over
mutual TLS, gets a well-formed answer. Causes:

- ``unreachable``: refused, DNS, no answer in time;
- ``TLS trust``: the IdP's server certificate does not verify against ``ca_file``;
- ``client certificate rejected``: the IdP ended the handshake on our certificate;
- ``client authentication refused``: a 401 (``invalid_client``): ``client_id`` unknown at the IdP,
  or the certificate, secret or assertion key registered for it are not ours (IdPs answer these
  alike, on purpose);
- ``wrong issuer in discovery``, ``trailing slash``: the metadata's ``issuer`` differs;
- ``unusable answer``: any other status or body.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sidecar.config import Config, IdpConfig
from sidecar.idp.client_auth import ClientAuth
from sidecar.idp.discovery import Endpoints, endpoints_from_metadata, metadata_urls
from sidecar.idp.failures import IdpError, IdpFailure
from sidecar.idp.fetch import decode_json, fetch_body, fetch_json, post_form
from sidecar.idp.issuers import tenant_configs
from sidecar.idp.jwk_set import JwksError, parse_jwks
from sidecar.idp.tls import IdpSession, TlsConfigError

UNREACHABLE = frozenset({IdpFailure.REFUSED, IdpFailure.CONNECT_TIMEOUT, IdpFailure.CONNECT_FAILED,
                         IdpFailure.DNS, IdpFailure.TIMEOUT})
UNTRUSTED = frozenset({IdpFailure.TLS_UNTRUSTED, IdpFailure.TLS_HOSTNAME, IdpFailure.TLS_EXPIRED})
# The IdP cut the connection during or right after our certificate (TLS 1.3 loses the alert to the RST).
CUT = frozenset({IdpFailure.RESET, IdpFailure.TLS, IdpFailure.DISCONNECTED, IdpFailure.CONNECTION})
_JSON = {"Accept": "application/json"}


@dataclass(frozen=True)
class Finding:
    key: str  # the dotted key to fix
    cause: str
    detail: str

    def __str__(self) -> str:
        return f"{self.key}: {self.cause}: {self.detail}"


class _Failed(Exception):
    def __init__(self, finding: Finding) -> None:
        self.finding = finding


async def check_online(config: Config) -> list[Finding]:
    """Every issuer checked; the failures found (empty: every issuer works with our client)."""
    findings = []
    for name, idp in config.every_issuer.items():
        where = "idp" if name == "default" else f"issuers.{name}"
        for one in tenant_configs(idp):
            try:
                await _check_issuer(where, one)
            except _Failed as failed:
                findings.append(failed.finding)
    return findings


async def _check_issuer(where: str, idp: IdpConfig) -> None:
    try:
        session = IdpSession(idp)
    except TlsConfigError as exc:
        raise _Failed(Finding(f"{where}.cert_file", "TLS files", str(exc).replace("idp.", f"{where}."))) from None
    try:
        endpoints = await _discover(where, idp, session)
        if endpoints.jwks_uri and idp.token_format != "introspection":
            await _jwks(where, endpoints.jwks_uri, session)
        if idp.token_format != "jwt":
            if endpoints.introspection is None:
                raise _Failed(Finding(f"{where}.introspection_endpoint", "no introspection endpoint",
                                      "neither configured nor advertised by discovery"))
            await _introspect(where, idp, endpoints.introspection, session)
    finally:
        await session.aclose()


def _network(where: str, what: str, exc: IdpError) -> Finding:
    """A failed call, by where it failed: the way there, the IdP's certificate, ours, the answer."""
    if exc.kind in UNREACHABLE:
        return Finding(f"{where}.{what}", "unreachable", exc.detail)
    if exc.kind in UNTRUSTED:
        return Finding(f"{where}.ca_file", "TLS trust", f"the IdP's certificate does not verify: {exc.detail}")
    if exc.kind in CUT:
        return Finding(f"{where}.cert_file", "client certificate rejected", f"the IdP ended the connection on our "
                       f"certificate: {exc.detail}")
    return Finding(f"{where}.{what}", "unusable answer", exc.detail)


async def _discover(where: str, idp: IdpConfig, session: IdpSession) -> Endpoints:
    if not idp.issuer:
        return Endpoints(idp.introspection_endpoint, idp.jwks_uri, None)
    first: IdpError | None = None
    for url in metadata_urls(idp.issuer):
        try:
            metadata = await fetch_json(session.session, "GET", url, what=url, max_bytes=256 * 1024, headers=_JSON)
        except IdpError as exc:
            first = first or exc
            continue
        if not isinstance(metadata, dict):
            raise _Failed(Finding(f"{where}.issuer", "unusable answer", f"{url}: not a JSON object"))
        try:
            return endpoints_from_metadata(metadata, idp)
        except IdpError as exc:
            cause = "trailing slash" if "trailing slash" in exc.detail else "wrong issuer in discovery"
            raise _Failed(Finding(f"{where}.issuer", cause, exc.detail)) from None
    assert first is not None
    raise _Failed(_network(where, "issuer", first))


async def _jwks(where: str, url: str, session: IdpSession) -> None:
    try:
        _, body = await fetch_body(session.session, "GET", url, what="JWK Set", max_bytes=1 << 20, headers=_JSON)
        parse_jwks(body)
    except IdpError as exc:
        raise _Failed(_network(where, "jwks_uri", exc)) from None
    except JwksError as exc:
        raise _Failed(Finding(f"{where}.jwks_uri", "unusable answer", f"JWK Set: {exc}")) from None


async def _introspect(where: str, idp: IdpConfig, endpoint: str, session: IdpSession) -> None:
    """One introspection of a random token: ``{"active": false}`` proves the way and our client."""
    form, headers = ClientAuth(idp).credentials(endpoint)
    form.update({"token": secrets.token_urlsafe(32), "token_type_hint": "access_token"})
    try:
        _, body = await post_form(session.poster, endpoint, what="introspection", max_bytes=256 * 1024,
                                  headers={**headers, **_JSON}, form=form, timeout=idp.timeout,
                                  connect_timeout=idp.connect_timeout)
        answer = decode_json(body, "introspection")
    except IdpError as exc:
        if exc.idp_status in (400, 401):
            raise _Failed(Finding(f"{where}.client_id", "client authentication refused",
                                  f"HTTP {exc.idp_status} at {endpoint}: the IdP does not know client_id "
                                  f"{idp.client_id!r}, or the {idp.auth_method} credentials registered for it "
                                  "are not ours")) from None
        raise _Failed(_network(where, "introspection_endpoint", exc)) from None
    if not isinstance(answer, dict) or answer.get("active") is not False:
        raise _Failed(Finding(f"{where}.introspection_endpoint", "unusable answer",
                              "a random token's introspection is not {\"active\": false}"))
