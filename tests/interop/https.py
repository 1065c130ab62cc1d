"""A small blocking HTTPS client for the interop tests: one fresh TLS connection per request,
presenting the given client certificate (or none), verifying the server against the test CA."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPSConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def tls_context(ca_file: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


def request(
    url: str, *, ca_file: Path | None = None, cert: tuple[Path, Path] | None = None, method: str = "GET",
    headers: dict[str, str] | None = None, form: dict[str, str] | None = None, timeout: float = 10.0,
    repeated: list[tuple[str, str]] | None = None, source: str | None = None,
) -> Reply:
    """``repeated``: header fields sent after ``headers``, one line each (a name may repeat);
    ``source``: the loopback address to connect from (127.0.0.2: another client than the proxy)."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    connection: HTTPConnection
    if parts.scheme == "https":
        assert ca_file is not None, "https needs the test CA"
        connection = HTTPSConnection(parts.hostname, parts.port, context=tls_context(ca_file, cert), timeout=timeout,
                                     source_address=(source, 0) if source else None)
    else:
        connection = HTTPConnection(parts.hostname, parts.port, timeout=timeout,
                                    source_address=(source, 0) if source else None)
    sent = dict(headers or {})
    body = None
    if form is not None:
        body = urlencode(form)
        sent["Content-Type"] = "application/x-www-form-urlencoded"
        method = "POST" if method == "GET" else method
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        if repeated:
            connection.putrequest(method, path)
            for name, value in [*sent.items(), *repeated]:
                connection.putheader(name, value)
            connection.endheaders(body.encode() if body is not None else None)
        else:
            connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        data = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        connection.close()
