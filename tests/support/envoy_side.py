"""What Envoy sends to an ext_authz service, built the way Envoy's source builds it.

- XFCC (``conn_manager_utility.cc``): one element per hop, ``;``-separated pairs in the order
  By, Hash, Cert, Chain, Subject, URI, DNS; ``Hash`` is the lower-case hex SHA-256 of the DER;
  ``Cert``, ``Chain`` and ``Subject`` are double-quoted. ``Cert`` is URL-encoded PEM: older
  Envoys replace only ``\\n`` ``space`` ``+`` ``/`` ``=``, newer ones percent-encode everything but
  RFC 3986 unreserved characters.
- HTTP ext_authz: the original method, ``path_prefix`` + original ``:path`` (query included),
  ``Content-Length: 0``, Host, Authorization and the ``allowed_headers`` only.
- gRPC ext_authz: ``attributes.request.http`` with lower-case ``headers`` (repeated headers
  joined with ``,``), ``method``, ``path``, ``host``; ``attributes.source.certificate`` with
  ``include_peer_certificate``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as pb

from sidecar.dev.pki import Issued


def url_encode_pem(pem: bytes, *, legacy: bool = False) -> str:
    text = pem.decode()
    if legacy:
        for old, new in (("\n", "%0A"), (" ", "%20"), ("+", "%2B"), ("/", "%2F"), ("=", "%3D")):
            text = text.replace(old, new)
        return text
    return quote(text, safe="-._~")


def sha256_hex(issued: Issued) -> str:
    return hashlib.sha256(issued.der).hexdigest()


def xfcc_element(
    issued: Issued | None = None, *, by: str | None = None, hash_: bool = True, cert: bool = True,
    chain: Sequence[Issued] = (), subject: str | None = None, uri: str | None = None,
    dns: str | None = None, legacy: bool = False,
) -> str:
    """One XFCC element as Envoy writes it for ``issued`` (the verified peer certificate)."""
    pairs = []
    if by:
        pairs.append(f"By={by}")
    if issued is not None and hash_:
        pairs.append(f"Hash={sha256_hex(issued)}")
    if issued is not None and cert:
        pairs.append(f'Cert="{url_encode_pem(issued.cert_pem, legacy=legacy)}"')
    if chain:
        pem = b"".join(c.cert_pem for c in chain)
        pairs.append(f'Chain="{url_encode_pem(pem, legacy=legacy)}"')
    if subject is not None:
        escaped = subject.replace("\\", "\\\\").replace('"', '\\"')
        pairs.append(f'Subject="{escaped}"')
    if uri:
        pairs.append(f"URI={uri}")
    if dns:
        pairs.append(f"DNS={dns}")
    return ";".join(pairs)


def http_check_headers(
    authorization: Sequence[str] = (), xfcc: str | Sequence[str] | None = None, host: str = "api.example.com",
) -> list[tuple[str, str]]:
    """The headers of Envoy's HTTP authorization request (allowed_headers: XFCC, each field, and the
    scheme Envoy sets at the edge, ``use_remote_address``)."""
    headers = [("host", host), ("content-length", "0"), ("x-forwarded-proto", "https")]
    headers += [("authorization", value) for value in authorization]
    for value in [xfcc] if isinstance(xfcc, str) else xfcc or ():
        headers.append(("x-forwarded-client-cert", value))
    return headers


def check_request(
    authorization: Sequence[str] = (), *, peer_certificate: str = "", xfcc: str | Sequence[str] | None = None,
    method: str = "GET", path: str = "/api/items?page=2", host: str = "api.example.com",
    extra: Mapping[str, str] | None = None, raw_headers: bool = False,
) -> Any:
    """A gRPC CheckRequest as Envoy fills it (``raw_headers``: ``encode_raw_headers: true``)."""
    headers: dict[str, str] = {":authority": host, ":method": method, ":path": path, "user-agent": "curl/8"}
    if authorization:
        headers["authorization"] = ",".join(authorization)
    fields = [xfcc] if isinstance(xfcc, str) else list(xfcc or ())
    if fields:
        headers["x-forwarded-client-cert"] = ",".join(fields)  # how Envoy joins repeated fields
    headers.update(extra or {})
    request = pb.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.host, http.scheme, http.protocol = method, path, host, "https", "HTTP/2"
    http.query = path.partition("?")[2]
    if raw_headers:
        pairs = [(k, v) for k, v in headers.items() if k not in ("authorization", "x-forwarded-client-cert")]
        pairs += [("authorization", v) for v in authorization]
        pairs += [("x-forwarded-client-cert", v) for v in fields]
        http.header_map.headers.extend(base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs)
    else:
        http.headers.update(headers)
    request.attributes.source.address.socket_address.address = "203.0.113.7"
    request.attributes.source.address.socket_address.port_value = 51234
    if peer_certificate:
        request.attributes.source.certificate = peer_certificate
    return request
