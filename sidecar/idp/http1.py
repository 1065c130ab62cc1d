"""The IdP call of a new token: an HTTP/1.1 POST of a form over keep-alive (mutual) TLS connections.

aiohttp's client builds a request object, a response object, timers and a stream reader for every
call: about 130 µs of CPU per introspection, a third of what a new token cost the sidecar
(docs/performance.md, "Where the CPU of a new token goes"). This client writes one prepared
request and reads the answer with llhttp (``httptools``) into a status, a few headers and a
bounded body: about 45 µs.
Discovery and the JWK Set (rare GETs that may follow redirects) stay on aiohttp (fetch.py).

One request at a time per connection, never pipelined. Bytes that arrive when no answer is awaited,
or after the awaited one, close the connection: an answer is only ever read as the answer to the
request just sent on it, so one token's answer can never be taken for another's. Any failure,
timeout or cancellation closes the connection too. Every failure is an
:class:`~sidecar.idp.failures.IdpError` of the kind aiohttp's would have been (fetch.py), so the
guard retries, blames and opens its breaker as before.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

from sidecar.idp.failures import IdpError, IdpFailure

MAX_HEAD_BYTES = 64 * 1024  # status line and header fields of one answer
_VERIFY_CODES = {62: IdpFailure.TLS_HOSTNAME, 64: IdpFailure.TLS_HOSTNAME, 10: IdpFailure.TLS_EXPIRED}


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]  # lower-case names; the first of repeated fields
    body: bytes


@dataclass(frozen=True, slots=True)
class _Origin:
    scheme: str
    host: str
    port: int
    target: str  # path and query
    authority: str  # the Host header

    @classmethod
    def of(cls, url: str) -> _Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url[:80]!r}")
        default = 443 if parts.scheme == "https" else 80
        port = parts.port or default
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.scheme, host, port, target, shown if port == default else f"{shown}:{port}")


class _Connection(asyncio.Protocol):
    """One keep-alive connection; the httptools callbacks fill the answer being awaited."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.origin: _Origin | None = None
        self.idle_since = 0.0
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._max_bytes = 0
        self._reset()

    def _reset(self) -> None:
        self._head_bytes = 0
        self._received = False  # a byte of this answer arrived
        self._headers: dict[str, str] = {}
        self._headers_done = False
        self._body = bytearray()
        self._interim = False  # a 1xx answer, skipped
        self._until_close = False  # no length: the body ends with the connection
        self._keep_alive = False  # the answer was whole and the IdP keeps the connection open
        self._complete = False

    @property
    def reusable(self) -> bool:
        transport = self.transport
        return self._keep_alive and not self.closed and transport is not None and not transport.is_closing()

    def exchange(self, request: bytes, max_bytes: int) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self._reset()
        self._max_bytes = max_bytes
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self._waiter

    def finished(self) -> None:
        """The caller has the answer (or gave up on it): from now on no byte is awaited."""
        self._waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TLS transport is no subclass

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():  # nobody asked: never read as an answer
            self._keep_alive = False
            self.close()
            return
        self._received = True
        if not self._headers_done:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._fail(IdpError(IdpFailure.GARBAGE, f"answer head over {MAX_HEAD_BYTES} bytes"))
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:  # raised by a callback below
            cause = exc.__context__
            self._fail(cause if isinstance(cause, IdpError) else IdpError(IdpFailure.GARBAGE, "unreadable answer"))
        except httptools.HttpParserError as exc:
            self._fail(IdpError(IdpFailure.GARBAGE, f"unreadable HTTP answer: {exc}"[:200]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if exc is None and self._until_close and self._headers_done:
            self._deliver()  # the IdP said how long the body is by closing
        elif isinstance(exc, ConnectionResetError) or getattr(exc, "errno", None) == errno.ECONNRESET:
            waiter.set_exception(IdpError(IdpFailure.RESET, "connection reset"))
        elif isinstance(exc, ssl.SSLError):
            waiter.set_exception(IdpError(IdpFailure.TLS, f"TLS: {exc}"[:200]))
        elif not self._received:  # typically an idle keep-alive connection the IdP had closed
            waiter.set_exception(IdpError(IdpFailure.DISCONNECTED, "closed without answering"))
        else:
            waiter.set_exception(IdpError(IdpFailure.TRUNCATED, "closed in the middle of the answer"))

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._complete:
            raise IdpError(IdpFailure.GARBAGE, "bytes past the answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        status = self._parser.get_status_code()
        self._interim = 100 <= status < 200
        headers = self._headers
        self._until_close = ("content-length" not in headers and "transfer-encoding" not in headers
                             and status not in (204, 304) and not self._interim)

    def on_body(self, body: bytes) -> None:
        if len(self._body) + len(body) > self._max_bytes:
            raise IdpError(IdpFailure.TOO_LARGE, f"answer over {self._max_bytes} bytes")
        self._body += body

    def on_message_complete(self) -> None:
        if self._interim:  # 1xx (RFC 9110 §15.2): the answer is still to come
            self._headers, self._headers_done, self._interim = {}, False, False
            return
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()
        self._deliver()

    def _deliver(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(Answer(self._parser.get_status_code(), self._headers, bytes(self._body)))

    def _fail(self, error: IdpError) -> None:
        self._keep_alive = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()


class FormPoster:
    """Keep-alive connections to the IdP on one TLS context (rotation makes a new poster): at most
    ``limit`` open at once (``idp.max_connections``), an idle one reused for ``keepalive`` seconds."""

    def __init__(self, context: ssl.SSLContext | None, *, limit: int, user_agent: str,
                 keepalive: float = 60.0) -> None:
        self._context = context
        self._limit = limit
        self._keepalive = keepalive
        self._user_agent = user_agent
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._idle_count = 0
        self._busy = 0  # connections in use or being opened
        self._waiting: list[asyncio.Future[None]] = []
        self._origins: dict[str, _Origin] = {}
        self.closed = False

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], *, timeout: float,
                   connect_timeout: float, max_bytes: int) -> Answer:
        """One POST of ``body`` (a form); raises :class:`IdpError`, or TimeoutError past ``timeout``."""
        origin = self._origins.get(url)
        if origin is None:
            origin = self._origins.setdefault(url, _Origin.of(url))
        request = self._request(origin, body, headers)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        connection = self._take_idle(origin)  # the usual case: a kept connection, at once
        if connection is None:
            async with asyncio.timeout_at(deadline):
                connection = await self._acquire(origin)
        try:
            if connection is None:
                connection = await self._connect(origin, min(connect_timeout, deadline - loop.time()))
            async with asyncio.timeout_at(deadline):
                answer = await connection.exchange(request, max_bytes)
        except BaseException:
            if connection is not None:
                connection.close()
            self._release(None)
            raise
        self._release(connection)
        return answer

    def _request(self, origin: _Origin, body: bytes, headers: Mapping[str, str]) -> bytes:
        lines = [f"POST {origin.target} HTTP/1.1", f"Host: {origin.authority}", f"User-Agent: {self._user_agent}"]
        if not any(name.lower() == "accept" for name in headers):
            lines.append("Accept: */*")
        for name, value in headers.items():
            if "\r" in name or "\n" in name or ":" in name or "\r" in value or "\n" in value:
                raise ValueError(f"header {name[:40]!r}: a line break or a colon")  # ours: a bug, never input
            lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    def _take_idle(self, origin: _Origin) -> _Connection | None:
        """A kept connection to ``origin`` that is still open, now in use; None when there is none."""
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()  # the most recently used: the likeliest to be open still
            self._idle_count -= 1
            transport = connection.transport
            if connection.closed or transport is None or transport.is_closing() \
                    or time.monotonic() - connection.idle_since > self._keepalive:
                connection.close()
                continue
            self._busy += 1
            return connection
        return None

    async def _acquire(self, origin: _Origin) -> _Connection | None:
        """A kept connection to ``origin``, or None with a slot to open one (waits at the limit)."""
        while True:
            connection = self._take_idle(origin)
            if connection is not None:
                return connection
            if self._busy + self._idle_count < self._limit:
                self._busy += 1
                return None
            if self._idle_count:  # idle connections to another origin give up their slots
                for connections in self._idle.values():
                    while connections:
                        connections.pop().close()
                        self._idle_count -= 1
                continue
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiting:
                    self._waiting.remove(waiter)

    async def _connect(self, origin: _Origin, connect_timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        secure = origin.scheme == "https"
        try:
            async with asyncio.timeout(connect_timeout):
                _, connection = await loop.create_connection(
                    _Connection, origin.host, origin.port, ssl=self._context if secure else None,
                    server_hostname=origin.host if secure else None)
        except TimeoutError:
            raise IdpError(IdpFailure.CONNECT_TIMEOUT, "no connection in time") from None
        except ssl.SSLCertVerificationError as exc:
            raise IdpError(_VERIFY_CODES.get(exc.verify_code, IdpFailure.TLS_UNTRUSTED),
                           f"TLS: {exc.verify_message}"[:200]) from None
        except ssl.SSLError as exc:
            raise IdpError(IdpFailure.TLS, f"TLS: {exc}"[:200]) from None
        except socket.gaierror as exc:
            raise IdpError(IdpFailure.DNS, f"DNS: {exc}"[:200]) from None
        except ConnectionRefusedError:
            raise IdpError(IdpFailure.REFUSED, "connection refused") from None
        except ConnectionResetError:
            raise IdpError(IdpFailure.RESET, "connection reset") from None
        except OSError as exc:
            raise IdpError(IdpFailure.CONNECT_FAILED, f"connect: {exc}"[:200]) from None
        connection.origin = origin
        return connection

    def _release(self, connection: _Connection | None) -> None:
        """The call is over: its connection kept for the next call when reusable, else closed."""
        self._busy -= 1
        if connection is not None:
            connection.finished()
            if connection.reusable and not self.closed and connection.origin is not None:
                connection.idle_since = time.monotonic()
                self._idle.setdefault(connection.origin, []).append(connection)
                self._idle_count += 1
            else:
                connection.close()
        while self._waiting:
            waiter = self._waiting.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                break

    async def close(self) -> None:
        """Close the idle connections; a call in flight closes its own when it ends."""
        self.closed = True
        for connections in self._idle.values():
            while connections:
                connections.pop().close()
        self._idle_count = 0
