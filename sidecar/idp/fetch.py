"""One way to ask the IdP for a JSON document: introspection, discovery metadata, the JWK Set.
The introspection POST goes through the lean client of http1.py (:func:`post_form`), the rare
GETs through aiohttp (:func:`fetch_body`); both check the answer the same way (:func:`accepted`).

Every such call has the same failure vocabulary, so the retries, the circuit breaker and the
metrics read one :class:`~sidecar.idp.failures.IdpFailure` instead of three dialects. The
answer must be a 200 with a JSON content type (RFC 7662 §2.2, RFC 8414 §3.2, RFC 7517 §8.5),
a body of at most ``max_bytes`` and valid JSON; anything else raises :class:`IdpError`.
Redirects are never followed for a POST: the form carries the token (and maybe our secret).
"""

from __future__ import annotations

import errno
import json
import re
import socket
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.parse import quote_plus

import aiohttp

from sidecar.idp.failures import IdpError, IdpFailure
from sidecar.idp.http1 import FormPoster
from sidecar.support.body import BodyTooLarge, read_bounded

MAX_RETRY_AFTER = 300.0  # seconds: the longest Retry-After from the IdP we honour
FORM = "application/x-www-form-urlencoded"
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]*")  # what urlencode's quote_plus leaves as it is


async def fetch_json(
    session: aiohttp.ClientSession, method: Literal["GET", "POST"], url: str, *, what: str,
    max_bytes: int, headers: Mapping[str, str], timeout: aiohttp.ClientTimeout | None = None,
) -> object:
    """The decoded JSON answer to one call; ``what`` names the document in error details."""
    _, body = await fetch_body(session, method, url, what=what, max_bytes=max_bytes, headers=headers,
                               timeout=timeout)
    return decode_json(body, what)


def decode_json(body: bytes, what: str) -> object:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: a deeply nested answer
        raise IdpError(IdpFailure.GARBAGE, f"{what}: not JSON") from None


async def fetch_body(
    session: aiohttp.ClientSession, method: Literal["GET", "POST"], url: str, *, what: str,
    max_bytes: int, headers: Mapping[str, str], timeout: aiohttp.ClientTimeout | None = None,
    also: tuple[str, ...] = (),
) -> tuple[str, bytes]:
    """(content type, body) of a 200 answer with a JSON content type, or one of ``also``."""
    try:
        async with session.request(method, url, headers=headers, allow_redirects=method == "GET",
                                   timeout=timeout or session.timeout) as response:
            ctype = accepted(response.status, response.headers, what, also)
            body = await read_bounded(response.content, max_bytes, response.content_length)
    except BodyTooLarge:
        raise IdpError(IdpFailure.TOO_LARGE, f"{what}: over {max_bytes} bytes") from None
    except aiohttp.ClientError as exc:
        raise IdpError(failure_of(exc), f"{what}: {type(exc).__name__}: {exc}"[:300]) from None
    except TimeoutError:
        raise IdpError(IdpFailure.TIMEOUT, f"{what}: no answer in time") from None
    return ctype, body


async def post_form(
    poster: FormPoster, url: str, *, what: str, max_bytes: int, headers: Mapping[str, str],
    form: Mapping[str, str], timeout: float, connect_timeout: float, also: tuple[str, ...] = (),
) -> tuple[str, bytes]:
    """:func:`fetch_body` for a POST of ``form`` on the lean client (http1.py): the introspection
    call of every new token. The same checks, the same failures."""
    headers = {**headers, "Content-Type": FORM}
    try:
        answer = await poster.post(url, encode_form(form), headers, timeout=timeout,
                                   connect_timeout=connect_timeout, max_bytes=max_bytes)
    except TimeoutError:
        raise IdpError(IdpFailure.TIMEOUT, f"{what}: no answer in time") from None
    return accepted(answer.status, answer.headers, what, also), answer.body


def encode_form(form: Mapping[str, str]) -> bytes:
    """``urlencode(form)`` as bytes, without quoting what needs none (a token, our client id): 2.4
    µs instead of 7 for an introspection form."""
    return "&".join(f"{_plain(name)}={_plain(value)}" for name, value in form.items()).encode("ascii")


def _plain(text: str) -> str:
    return text if _UNRESERVED.fullmatch(text) else quote_plus(text)


def accepted(status: int, headers: Mapping[str, str], what: str, also: tuple[str, ...]) -> str:
    """The content type of an answer we read (a 200 with a JSON type, or one of ``also``), or the
    failure; ``headers`` matches its names without case."""
    if status != 200:
        raise IdpError(IdpFailure.of_status(status), f"{what}: HTTP {status}", status=status,
                       retry_after=retry_after(headers.get("retry-after")))
    ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json") and ctype not in also:
        raise IdpError(IdpFailure.CONTENT_TYPE, f"{what}: unexpected {ctype[:60]!r}")
    return ctype


def failure_of(exc: aiohttp.ClientError) -> IdpFailure:
    """Where in the call it failed, and how."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return IdpFailure.CONNECT_TIMEOUT
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return IdpFailure.TIMEOUT
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        code = getattr(exc.certificate_error, "verify_code", None)
        # X509_V_ERR_HOSTNAME_MISMATCH 62, _IP_ADDRESS_MISMATCH 64; _CERT_HAS_EXPIRED 10
        return _VERIFY_CODES.get(code or 0, IdpFailure.TLS_UNTRUSTED)
    if isinstance(exc, aiohttp.ClientSSLError):
        return IdpFailure.TLS
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, socket.gaierror):
            return IdpFailure.DNS
        return IdpFailure.REFUSED if isinstance(exc.os_error, ConnectionRefusedError) else IdpFailure.CONNECT_FAILED
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return IdpFailure.DISCONNECTED
    if isinstance(exc, aiohttp.ClientPayloadError):
        return IdpFailure.TRUNCATED
    if isinstance(exc, aiohttp.ClientOSError) and exc.errno == errno.ECONNRESET:
        return IdpFailure.RESET
    return IdpFailure.CONNECTION


_VERIFY_CODES = {62: IdpFailure.TLS_HOSTNAME, 64: IdpFailure.TLS_HOSTNAME, 10: IdpFailure.TLS_EXPIRED}


def retry_after(value: str | None) -> int:
    """RFC 9110 §10.2.3 Retry-After: delay-seconds or an HTTP-date; 1 when absent or unreadable."""
    if not value:
        return 1
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return 1
    return int(min(max(seconds, 1.0), MAX_RETRY_AFTER))
