"""Protection of a listening port below the routes: how many connections it holds, how long and
how many bytes a request head may take, and error answers that never echo the request.

aiohttp gives none of these. Its keep-alive timer (75 s) is all that ends a half-sent request;
a head may hold 128 fields of ``max_field_size`` bytes (measured: 2 MiB of RSS per half-sent
request on the admin port, 14 MiB on the check port); it accepts connections until the process
runs out of file descriptors (then every check fails); and the body of its 400 quotes the
offending request line or header, bearer token included.

:class:`GuardedSite` listens like ``web.TCPSite`` but builds each connection through a
:class:`Gate`, which refuses connections past the port's cap (``503``, closed at once) and
serves the others with :class:`GuardedHandler`. On the admin port (``evict_idle``) a new
connection past a cap closes the oldest connection that is not running a request instead — the
peer's own one past the per-peer cap, anyone's past the port's cap — so connections held open
(idle keep-alive, or a head trickled in) cannot keep the kubelet's probes out:

- a request head must be complete within ``header_timeout`` of its first byte (or of the
  connection's opening), else ``408`` and the connection is closed;
- the bytes of an incomplete head are bounded by ``max_head_bytes``, else ``431`` and closed;
- every error answer aiohttp would build (400 for a malformed request, 500 for a bug) has a
  fixed body: nothing from the request, and the log line names only the exception type.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from collections import Counter as Tally
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast

from aiohttp import StreamReader, web
from aiohttp.web_request import BaseRequest
from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger(__name__)
LOG_EVERY = 10.0  # seconds between two log lines about refusals of one kind on one port


@dataclass(frozen=True)
class PortLimits:
    name: str  # "check" or "admin": the label in logs and metrics
    max_connections: int
    header_timeout: float
    max_head_bytes: int
    idle_timeout: float  # aiohttp's keep-alive timeout: an idle connection is closed after it
    max_per_peer: int = 0  # connections one peer address may hold; 0: no per-peer cap
    max_field_size: int = 8190
    max_headers: int = 128
    evict_idle: bool = False  # past a cap, close the oldest connection not running a request, not the new one


def fit_file_descriptors(check: int, admin: int, *, reserve: int) -> tuple[int, int]:
    """Both connection caps, lowered to fit RLIMIT_NOFILE with ``reserve`` descriptors to spare.

    The soft limit is first raised to the hard one (as Go's runtime does): 1024 is a common soft
    limit. The admin cap is served first and is small; the check port gets what is left, so a
    flood of the admin port never takes the descriptors that checks (and IdP calls) need.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    if soft == resource.RLIM_INFINITY:
        return check, admin
    spare = max(soft - reserve, 2)
    admin_fit = max(1, min(admin, spare // 8))
    check_fit = max(1, min(check, spare - admin_fit))
    if (check_fit, admin_fit) != (check, admin):
        log.warning("connection caps lowered to fit the file-descriptor limit",
                    extra={"nofile": soft, "max_connections": check_fit, "admin_max_connections": admin_fit})
    return check_fit, admin_fit


class PortMetrics:
    """Open connections and refusals per port, in the sidecar's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.open = Gauge("sidecar_connections", "Open HTTP connections by port", ["port"], registry=registry)
        self.refused = Counter(
            "sidecar_http_refused", "Connections or requests refused below the routes, by port and reason",
            ["port", "reason"], registry=registry,
        )


def _answer(status: HTTPStatus) -> bytes:
    """A complete, fixed HTTP/1.1 answer that closes the connection."""
    body = f"{status.value} {status.phrase}\n".encode()
    return (f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n"
            + ("Retry-After: 1\r\n" if status == HTTPStatus.SERVICE_UNAVAILABLE else "")
            + "\r\n").encode() + body


_BUSY = _answer(HTTPStatus.SERVICE_UNAVAILABLE)
_TIMEOUT = _answer(HTTPStatus.REQUEST_TIMEOUT)
_TOO_LARGE = _answer(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)


class Gate:
    """The protocol factory of one port: counts connections, refuses past the caps."""

    def __init__(self, server: web.Server, limits: PortLimits, metrics: PortMetrics) -> None:
        self.server = server
        self.limits = limits
        self.open = 0
        self._peers: Tally[str] = Tally()
        self._open_gauge = metrics.open.labels(limits.name)
        self._open_gauge.set_function(lambda: self.open)
        self._refused = {reason: metrics.refused.labels(limits.name, reason)
                         for reason in ("connection_limit", "peer_limit", "header_timeout", "head_too_large",
                                        "malformed", "evicted")}
        # The connections open, oldest first, with their peers: only where the oldest idle one is evicted.
        self._live: dict[GuardedHandler, str] | None = {} if limits.evict_idle else None
        self._logged_at: dict[str, float] = {}
        self._since_logged: Tally[str] = Tally()
        self._handler_args: dict[str, Any] = {
            "access_log": None, "keepalive_timeout": limits.idle_timeout,
            "max_line_size": limits.max_field_size, "max_field_size": limits.max_field_size,
            "max_headers": limits.max_headers,
        }

    def __call__(self) -> asyncio.Protocol:
        if self.open >= self.limits.max_connections and self._live is None:
            return _Refused(self, "connection_limit")
        return GuardedHandler(self.server, gate=self, loop=asyncio.get_running_loop(), **self._handler_args)

    def admit(self, peer: str, handler: GuardedHandler) -> str | None:
        """Take a slot for ``peer`` (with ``evict_idle``, by closing an idle connection if need be);
        the reason when there is none."""
        limits = self.limits
        if limits.max_per_peer and self._peers[peer] >= limits.max_per_peer:
            if not self._evict(peer):
                return "peer_limit"
        elif self.open >= limits.max_connections and not self._evict(None):
            return "connection_limit"
        self.open += 1
        self._peers[peer] += 1
        if self._live is not None:
            self._live[handler] = peer
        return None

    def _evict(self, peer: str | None) -> bool:
        """Close the oldest connection (of ``peer``, or anyone's) not running a request."""
        for handler, owner in (self._live or {}).items():
            if (peer is None or owner == peer) and handler.idle:
                handler.evict()
                self.refused("evicted")
                return True
        return False

    def release(self, peer: str, handler: GuardedHandler) -> None:
        self.open -= 1
        self._peers[peer] -= 1
        if not self._peers[peer]:
            del self._peers[peer]
        if self._live is not None:
            self._live.pop(handler, None)

    def refused(self, reason: str) -> None:
        """Count it; log it at most once per :data:`LOG_EVERY` seconds per reason (a flood is cheap)."""
        self._refused[reason].inc()
        self._since_logged[reason] += 1
        now = time.monotonic()
        if now - self._logged_at.get(reason, -LOG_EVERY) >= LOG_EVERY:
            self._logged_at[reason] = now
            log.warning("refused", extra={"port": self.limits.name, "reason": reason,
                                          "count": self._since_logged.pop(reason), "open": self.open})


class _Refused(asyncio.Protocol):
    """Past the cap: a fixed 503 and close, without parsing a byte."""

    def __init__(self, gate: Gate, reason: str) -> None:
        self._gate, self._reason = gate, reason

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._gate.refused(self._reason)
        _busy(transport)


def _busy(transport: asyncio.BaseTransport) -> None:
    """503 and close. (uvloop's transports are not asyncio.WriteTransport subclasses.)"""
    cast(asyncio.WriteTransport, transport).write(_BUSY)
    transport.close()


def _peer(transport: asyncio.BaseTransport) -> str:
    peername = transport.get_extra_info("peername")
    return str(peername[0]) if isinstance(peername, tuple) and peername else ""


class GuardedHandler(web.RequestHandler):
    """aiohttp's connection handler with a head deadline, a head byte bound and fixed error bodies.

    It reads three attributes of ``web.RequestHandler`` that aiohttp does not document:
    ``_request_count`` (heads parsed on this connection), ``_request_in_progress`` (a handler
    is running) and ``_messages`` (parsed requests not yet handled, with their bodies).
    tests/unit/test_connections.py fails if an aiohttp upgrade drops them.
    """

    def __init__(self, manager: web.Server, *, gate: Gate, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._gate = gate
        self._peer: str | None = None  # set once admitted
        self._evicted = False
        self._deadline: asyncio.TimerHandle | None = None
        self._heads_at_deadline = 0
        self._pending = 0  # bytes received towards a head not yet complete
        self._body: StreamReader | None = None  # the body of the last head parsed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = _peer(transport)
        refusal = self._gate.admit(peer, self)
        if refusal is not None:
            self._gate.refused(refusal)
            _busy(transport)
            return
        self._peer = peer
        super().connection_made(transport)
        self._arm()  # the first head must arrive in time too

    @property
    def idle(self) -> bool:
        """Open and running no request: an idle keep-alive connection, or a head still arriving."""
        return self._peer is not None and not self._request_in_progress

    def evict(self) -> None:
        """Give the slot up at once and close (the gate admits another connection in its place)."""
        if self._peer is None:
            return
        self._gate.release(self._peer, self)
        self._peer, self._evicted = None, True
        self._disarm()
        self.force_close()
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._peer is None:  # refused (aiohttp never saw it), or evicted (its slot already given up)
            if self._evicted:
                super().connection_lost(exc)
            return
        self._gate.release(self._peer, self)
        self._peer = None
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:  # a head is complete (or refused by the parser)
            self._pending = 0
            self._disarm()
            self._body = self._messages[-1][1] if self._messages else None
        elif self._body is not None and not self._body.is_eof():
            pass  # the body of the last request, read (or discarded) by aiohttp under its own bounds
        elif data and not self._request_in_progress:
            self._pending += len(data)
            if self._pending > self._gate.limits.max_head_bytes:
                self._refuse("head_too_large", _TOO_LARGE)
            elif self._deadline is None:
                self._arm()
        elif data and self._deadline is None:
            self._arm()  # a pipelined head while a handler runs: its deadline starts now

    def _arm(self) -> None:
        self._disarm()
        self._heads_at_deadline = self._request_count
        self._deadline = self._loop.call_later(self._gate.limits.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self._request_count != self._heads_at_deadline or self.transport is None:
            return
        if self._request_in_progress:  # the head in question waits behind a running handler
            self._arm()
            return
        self._refuse("header_timeout", _TIMEOUT)

    def _refuse(self, reason: str, answer: bytes) -> None:
        """Answer and close; only when no handler is writing to this connection."""
        self._gate.refused(reason)
        if self.transport is not None and not self._request_in_progress:
            with contextlib.suppress(Exception):
                self.transport.write(answer)
        self.force_close()

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A fixed body whatever went wrong: aiohttp's own quotes the request bytes (the token)."""
        if 400 <= status < 500:
            self._gate.refused("malformed")  # counted and logged without the request's bytes
        else:  # a bug or a handler timeout: the JSON log line names the exception type only
            log.error("error handling request", exc_info=exc, extra={"port": self._gate.limits.name})
        if request.writer.output_size > 0:  # as aiohttp: too late for an answer
            raise ConnectionError("response already started; closing")
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        response = web.Response(status=status, text=f"{status} {phrase}\n")
        response.force_close()
        return response


class GuardedSite(web.BaseSite):
    """``web.TCPSite`` with each connection made by a :class:`Gate`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, gate: Gate, *, backlog: int = 128,
                 reuse_port: bool = False) -> None:
        """``reuse_port``: ``SO_REUSEPORT``, for workers sharing the check port; without it, a port
        another process holds is refused (``OSError``), never silently shared."""
        super().__init__(runner, backlog=backlog)
        self._address = (host, port)
        self._gate = gate
        self._reuse_port = reuse_port
        self.port = port  # the bound port once started (port 0 picks one)

    @property
    def name(self) -> str:
        return f"http://{self._address[0]}:{self.port}"

    async def start(self) -> None:
        await super().start()
        server = await asyncio.get_running_loop().create_server(
            self._gate, *self._address, backlog=self._backlog, reuse_port=self._reuse_port,
        )
        self._server = server
        if server.sockets:
            self.port = int(server.sockets[0].getsockname()[1])
