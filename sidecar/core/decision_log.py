"""The decision log: one line per decision, with the request it was about.

Every line carries ``outcome``, ``reason``, ``token`` (its hash: :func:`sidecar.support.logs.token_hash`,
never the token), ``cache`` (``hit``, ``miss``, ``coalesced``, ``stale``, or ``none`` when the
decision ended before the cache), ``client_id``, ``policy``, and the request: ``request_id`` (the
proxy's ``x-request-id``, else the trace id of its ``traceparent``, else one made here),
``method``, ``host`` and ``path`` (without the query, which may hold a token, and cut to
:data:`MAX_PATH`; only from a trusted proxy, as the decision itself reads them),
``client_addr`` (the client a trusted proxy vouches for, else the peer), ``latency_ms`` (from the
check's arrival to its answer), and ``trace_id`` when the check was traced or a trusted proxy sent
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

from sidecar.core.admission import source_of
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
_PLAIN = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")  # printable ASCII but " and \: written as it is
_TRACE_ID = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_LIVE: weakref.WeakSet[DecisionLog] = weakref.WeakSet()
_MADE_PREFIX = os.urandom(4).hex()  # made request ids: unique per process start, then a counter
_made = count(1)

Fact = tuple[float, Entry, str, Policy, CheckRequest, str | None]  # (perf time, entry, cache, policy, request, trace)


@atexit.register
def _flush_all() -> None:
    for decision_log in list(_LIVE):
        decision_log.flush()


def _quoted(value: str | None) -> str:
    if value is None:
        return "null"
    return f'"{value}"' if _PLAIN.fullmatch(value) else json.dumps(value)


class DecisionLog:
    """The lines of one configuration's decisions; ``trusted``: the proxies that describe requests."""

    __slots__ = ("__weakref__", "_credit", "_every", "_fast", "_json", "_logger", "_pending", "_prefix", "_ratio",
                 "_second", "_trusted")

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
        _LIVE.add(self)

    def allow(self, now: float, entry: Entry, cache: str, policy: Policy, request: CheckRequest,
              trace_id: str | None = None) -> None:
        """Record an allow at ``now`` (``time.perf_counter``); ``trace_id``: the check was traced (its
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
        request_id, method, host, path, client, trace_id = self._describe(request, trace_id)
        fields: dict[str, Any] = {"request_id": request_id, "method": method, "host": host, "path": path,
                                  "client_addr": client, "latency_ms": round((now - request.started) * 1000, 3)}
        if trace_id is not None:
            fields["trace_id"] = trace_id
        return fields

    def _describe(self, request: CheckRequest, trace_id: str | None) -> tuple[
            str, str | None, str | None, str | None, str | None, str | None]:
        """(request id, method, host, path, client address, trace id); what only a trusted proxy may
        say (the original request, the client behind it, its trace) is left out from anyone else."""
        trusted = request.peer in self._trusted
        headers = request.headers
        request_id = None
        if headers is not None and trusted:
            given = headers.get("x-request-id")
            if given and len(given) <= MAX_REQUEST_ID and given.isprintable():
                request_id = given
            if trace_id is None and (parent := headers.get("traceparent")) and (found := _TRACE_ID.fullmatch(parent)):
                trace_id = found.group(1)
        if request_id is None:
            request_id = trace_id or f"{_MADE_PREFIX}{next(_made):x}"
        if not trusted:
            return request_id, None, None, None, request.peer, trace_id
        path = request.path
        if path is not None:
            path = path.partition("?")[0][:MAX_PATH]
        method, host = request.method, request.host
        return (request_id, method and method[:MAX_METHOD], host and host[:MAX_HOST], path,
                source_of(request.forwarded, True) or request.peer, trace_id)

    def _line(self, fact: Fact, offset: float) -> str:
        now, entry, cache, policy, request, trace_id = fact
        wall = now + offset
        second = int(wall)
        if second != self._second:
            self._second = second
            self._prefix = '{"ts":"' + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        request_id, method, host, path, client, trace_id = self._describe(request, trace_id)
        memo = self._json
        parts = []
        for value in (entry.info.client_id, method, host, client):
            found = memo.get(value)
            parts.append(found if found is not None else memo.put(value, _quoted(value)))
        client_id, method_json, host_json, client_json = parts
        trace = f',"trace_id":"{trace_id}"' if trace_id is not None else ""
        return (
            f'{self._prefix}.{int((wall - second) * 1000):03d}Z","level":"info","logger":"{self._logger.name}",'
            f'"msg":"allow","outcome":"allow","reason":"ok","token":"{entry.token_hash}","cache":"{cache}",'
            f'"client_id":{client_id},"policy":"{policy.name}","request_id":{_quoted(request_id)},'
            f'"method":{method_json},"host":{host_json},"path":{_quoted(path)},"client_addr":{client_json},'
            f'"latency_ms":{round((now - request.started) * 1000, 3)}{trace}}}\n'
        )

    def flush(self) -> None:
        facts, self._pending = self._pending, []
        handler = logs.HANDLER
        if not facts or handler is None:
            return
        offset = time.time() - time.perf_counter()  # facts carry perf_counter instants
        handler.acquire()
        try:
            line = self._line
            handler.stream.write("".join([line(fact, offset) for fact in facts]))
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
