"""The decision log: one line per decision, with the request it was about.

Every line carries ``outcome``, ``reason``, ``token`` (its hash: :func:`sidecar.support.logs.token_hash`,
never the token), ``cache`` (``hit``, ``miss``, ``coalesced``, ``stale``, or ``none`` when the
decision ended before the cache), ``client_id``, ``policy``, and the request: ``request_id`` (the
proxy's ``x-request-id``, else the trace id of its ``traceparent``, else one made here),
``method``, ``host``, ``client_addr`` (the client a trusted proxy vouches for, else the peer) and
``path`` (without the query, which may hold a token, and cut to :data:`MAX_PATH`; the original
request only from a trusted proxy, as the decision itself reads it), ``latency_us`` (from the
check's arrival to its answer, in microseconds), and ``trace_id`` when the check was traced or a trusted proxy sent
a ``traceparent`` (a line then leads to the proxy's trace even with tracing off here). Client-sent
values are bounded and JSON-escaped.

Allow lines at ``log.decisions = "all"`` (the hot path) do not go through ``logging``, which costs
about 20 µs of CPU a line (LogRecord, formatter, ``json.dumps``, one ``write`` per line). When the
process logs through the handler of :func:`sidecar.support.logs.setup` alone (production), a
request only records its facts (the time, its cache entry, the policy, the request object); the
lines are assembled when the batch is written: at most ``FLUSH_AFTER`` seconds or ``FLUSH_LINES``
lines after the first line of a batch, and at exit. The line is byte for byte what
:class:`sidecar.support.logs.JsonFormatter` writes; other log lines are not held back, so an allow
line can appear up to ``FLUSH_AFTER`` after a later line of another kind. In any other logging
set-up (pytest's caplog, an added handler or filter) the line goes through ``logging``.
``log.allow_sample_ratio`` below 1 writes that share of allow lines (every n-th, evenly).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import re
import time
import weakref
from itertools import count
from typing import Any

from sidecar.core.entry import Entry
from sidecar.core.extract import TrustedProxies
from sidecar.core.policy import Policy
from sidecar.core.request import CheckRequest
from sidecar.support import logs
from sidecar.support.memo import Memo, text_size

_MAX_CLIENT_IDS = 4096
FLUSH_AFTER = 0.02  # seconds: one write per 20 ms instead of one per line
FLUSH_LINES = 512
MAX_PATH = 256
MAX_HOST = 256
MAX_METHOD = 16
MAX_REQUEST_ID = 128
MAX_ADDRESS = 64
_PLAIN = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")  # printable ASCII but " and \: written as it is
_TRACE_ID = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_LIVE: weakref.WeakSet[DecisionLog] = weakref.WeakSet()
_MADE_PREFIX = os.urandom(4).hex()  # made request ids: unique per process start, then a counter
_made = count(1)
_MILLIS = [f"{n:03d}" for n in range(1000)]  # the timestamp's milliseconds, formatted once

Fact = tuple[float, Entry, str, Policy, CheckRequest, str | None]  # (time, entry, cache, policy, request, trace)


@atexit.register
def _flush_all() -> None:
    for decision_log in list(_LIVE):
        decision_log.flush()


def _made_id() -> str:
    return f"{_MADE_PREFIX}{next(_made):x}"


def _quoted(value: str | None) -> str:
    if value is None:
        return "null"
    return f'"{value}"' if _PLAIN.fullmatch(value) else json.dumps(value)


class DecisionLog:
    """The lines of one configuration's decisions; ``trusted``: the proxies that describe requests."""

    __slots__ = ("__weakref__", "_credit", "_every", "_fast", "_json", "_logger", "_pending", "_prefix", "_ratio",
                 "_second", "_trusted", "_who_json")

    def __init__(self, logger: logging.Logger, trusted: TrustedProxies, sample_ratio: float = 1.0) -> None:
        self._logger = logger
        self._trusted = trusted
        self._ratio = sample_ratio
        self._every = sample_ratio >= 1.0
        self._credit = 0.0
        self._pending: list[Fact] = []
        self._fast = False
        self._second = -1
        self._prefix = ""
        # JSON of the low-cardinality values (client ids, methods, hosts, addresses), bounded in bytes.
        self._json: Memo[str | None, str] = Memo(_MAX_CLIENT_IDS, max_bytes=1 << 20,
                                                 size_of=lambda key, value: text_size(key) + text_size(value))
        self._who_json: Memo[tuple[str | None, ...], tuple[bool, str]] = Memo(
            _MAX_CLIENT_IDS, max_bytes=1 << 20,
            size_of=lambda key, value: sum(text_size(k) for k in key) + text_size(value[1]))
        _LIVE.add(self)

    def allow(self, now: float, entry: Entry, cache: str, policy: Policy, request: CheckRequest,
              trace_id: str | None = None) -> None:
        """Record an allow answered at ``now`` (``time.time``); ``trace_id``: the check was traced (its
        line is written whatever the sample ratio)."""
        if not self._every and trace_id is None:
            credit = self._credit + self._ratio
            if credit < 1.0:
                self._credit = credit
                return
            self._credit = credit - 1.0
        pending = self._pending
        if not pending:  # first line of a batch: re-check the logging set-up, schedule the write
            self._fast = self._fast_path_possible()
            if not self._fast:
                self._slow((now, entry, cache, policy, request, trace_id))
                return
            try:
                asyncio.get_running_loop().call_later(FLUSH_AFTER, self.flush)
            except RuntimeError:  # not in a loop: write at once
                self._slow((now, entry, cache, policy, request, trace_id))
                return
        # Only the facts here; the line is formatted in flush(), for the whole batch at once (in a
        # loop that stays in the CPU's caches, it costs a fraction of formatting per request).
        pending.append((now, entry, cache, policy, request, trace_id))
        if len(pending) >= FLUSH_LINES:
            self.flush()

    def request_fields(self, request: CheckRequest | None, now: float, trace_id: str | None = None) -> dict[str, Any]:
        """The request's part of a line (its order is the line's): for the lines written through ``logging``."""
        if request is None:
            return {}
        trusted, method, host, client = self._who(request)
        request_id, path, trace_id = self._what(request, trusted, trace_id)
        fields: dict[str, Any] = {"request_id": request_id or _made_id(), "method": method, "host": host,
                                  "client_addr": client, "path": path,
                                  "latency_us": int((now - request.started) * 1e6)}
        if trace_id is not None:
            fields["trace_id"] = trace_id
        return fields

    def _who(self, request: CheckRequest) -> tuple[bool, str | None, str | None, str | None]:
        """(the peer is a trusted proxy, method, host, client address): what only a trusted proxy may
        say (the original request, the client behind it) is left out from anyone else."""
        if request.peer not in self._trusted:
            return False, None, None, request.peer
        method, host = request.method, request.host
        forwarded = request.forwarded  # the last element: the hop the trusted proxy added (as admission reads it)
        client = forwarded.rpartition(",")[2].strip()[:MAX_ADDRESS] if forwarded else ""
        return True, method and method[:MAX_METHOD], host and host[:MAX_HOST], client or request.peer

    def _what(self, request: CheckRequest, trusted: bool, trace_id: str | None) -> tuple[
            str | None, str | None, str | None]:
        """(request id, path, trace id): the proxy's id (else the trace's; None: make one) and trace
        only from a trusted proxy."""
        if not trusted:
            return trace_id, None, trace_id
        request_id = None
        headers = request.headers
        if headers is not None:
            given = headers.get("x-request-id")
            if given and len(given) <= MAX_REQUEST_ID and given.isprintable():
                request_id = given
            if trace_id is None and (parent := headers.get("traceparent")) and (found := _TRACE_ID.fullmatch(parent)):
                trace_id = found.group(1)
        path = request.path
        if path is not None:
            path = path.partition("?")[0][:MAX_PATH]
        return request_id or trace_id, path, trace_id

    def _line(self, fact: Fact) -> str:
        now, entry, cache, policy, request, trace_id = fact
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = '{"ts":"' + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        client_id = entry.info.client_id
        client_json = self._json.get(client_id) or self._put(client_id)
        # Who asked, as JSON, remembered per (peer, method, host, forwarded client): most checks repeat one.
        key = (request.peer, request.method, request.host, request.forwarded)
        who = self._who_json.get(key)
        if who is None:
            trusted, method, host, client = self._who(request)
            who = self._who_json.put(key, (trusted, f'"method":{_quoted(method)},"host":{_quoted(host)},'
                                                    f'"client_addr":{_quoted(client)}'))
        trusted, who_json = who
        request_id, path, trace_id = self._what(request, trusted, trace_id)
        made = f'"{_MADE_PREFIX}{next(_made):x}"' if request_id is None else _quoted(request_id)  # hex: no escaping
        trace = "" if trace_id is None else f',"trace_id":"{trace_id}"'
        return (
            f'{self._prefix}.{_MILLIS[int((now - second) * 1000)]}Z","level":"info","logger":"{self._logger.name}",'
            f'"msg":"allow","outcome":"allow","reason":"ok","token":"{entry.token_hash}","cache":"{cache}",'
            f'"client_id":{client_json},"policy":"{policy.name}","request_id":{made},{who_json},'
            f'"path":{"null" if path is None else _quoted(path)},"latency_us":{int((now - request.started) * 1e6)}'
            f'{trace}}}\n'
        )

    def _put(self, value: str | None) -> str:
        return self._json.put(value, _quoted(value))

    def flush(self) -> None:
        facts, self._pending = self._pending, []
        handler = logs.HANDLER
        if not facts or handler is None:
            return
        handler.acquire()
        try:
            line = self._line
            handler.stream.write("".join([line(fact) for fact in facts]))
            handler.flush()
        except Exception:  # a broken log stream must not break checks
            handler.handleError(logging.makeLogRecord({"msg": "allow"}))
        finally:
            handler.release()

    def _fast_path_possible(self) -> bool:
        handler = logs.HANDLER
        logger = self._logger
        if handler is None or handler.filters or not logger.isEnabledFor(logging.INFO):
            return False
        if logging.root.handlers != [handler] or logging.root.filters:
            return False
        node: logging.Logger | None = logger
        while node is not None and node is not logging.root:
            if node.handlers or node.filters or not node.propagate:
                return False
            node = node.parent
        return True

    def _slow(self, fact: Fact) -> None:
        now, entry, cache, policy, request, trace_id = fact
        self._logger.info("allow", extra={"outcome": "allow", "reason": "ok", "token": entry.token_hash,
                                          "cache": cache, "client_id": entry.info.client_id, "policy": policy.name,
                                          **self.request_fields(request, now, trace_id)})
