"""The ``allow`` line of the decision log, written without the logging machinery on the hot path.

Through ``logging`` an allow line costs about 20 µs of CPU (LogRecord, formatter, ``json.dumps``,
one ``write`` per line), as much as half of aiohttp's own work for a request. When the process
logs through the handler of :func:`sidecar.support.logs.setup` alone (production), a request only
records its facts (time, token hash, ``client_id``); the lines are assembled from strings (a
timestamp prefix refreshed once per second, the token's hash, the JSON of its ``client_id``)
when the batch is written: at most ``FLUSH_AFTER`` seconds or
``FLUSH_LINES`` lines after the first line of a batch, and at exit. The line is byte for byte what
:class:`sidecar.support.logs.JsonFormatter` writes; other log lines are not held back, so an allow line
can appear up to ``FLUSH_AFTER`` after a later line of another kind. In any other logging set-up
(pytest's caplog, an added handler or filter) the line goes through ``logging`` as before.

The token appears only as its hash (:func:`sidecar.support.logs.token_hash`), as in every log line.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import time
import weakref

from sidecar.support import logs
from sidecar.support.memo import Memo, text_size

_MAX_CLIENT_IDS = 4096
FLUSH_AFTER = 0.02  # seconds: one write per 20 ms instead of one per line
FLUSH_LINES = 512
_LIVE: weakref.WeakSet[AllowLog] = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    for allow_log in list(_LIVE):
        allow_log.flush()


class AllowLog:
    __slots__ = ("__weakref__", "_client_json", "_fast", "_logger", "_pending", "_prefix", "_second")

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._pending: list[tuple[float, str, str, str | None, str]] = []  # (time, hash, cache, client, policy)
        self._fast = False
        self._second = -1
        self._prefix = ""
        self._client_json: Memo[str | None, str] = Memo(_MAX_CLIENT_IDS, max_bytes=1 << 20,
                                                        size_of=lambda key, value: text_size(key) + text_size(value))
        _LIVE.add(self)

    def write(self, token_hash: str, cache: str, client_id: str | None, policy: str = "default") -> None:
        """``policy``: a configured policy name (plain characters: config/named.py), never client bytes."""
        pending = self._pending
        if not pending:  # first line of a batch: re-check the logging set-up, schedule the write
            self._fast = self._fast_path_possible()
            if not self._fast:
                self._slow(token_hash, cache, client_id, policy)
                return
            try:
                asyncio.get_running_loop().call_later(FLUSH_AFTER, self.flush)
            except RuntimeError:  # not in a loop: write at once
                self._slow(token_hash, cache, client_id, policy)
                return
        elif not self._fast:  # pragma: no cover - pending is only filled on the fast path
            self._slow(token_hash, cache, client_id, policy)
            return
        # Only the facts here; the line is formatted in flush(), for the whole batch at once (in a
        # loop that stays in the CPU's caches, it costs a fraction of formatting per request).
        pending.append((time.time(), token_hash, cache, client_id, policy))
        if len(pending) >= FLUSH_LINES:
            self.flush()

    def _line(self, now: float, token_hash: str, cache: str, client_id: str | None, policy: str) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = '{"ts":"' + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        client = self._client_json.get(client_id)
        if client is None:
            client = self._client_json.put(client_id, json.dumps(client_id))
        return (
            f'{self._prefix}.{int((now - second) * 1000):03d}Z","level":"info","logger":"{self._logger.name}",'
            f'"msg":"allow","outcome":"allow","reason":"ok","token":"{token_hash}","cache":"{cache}",'
            f'"client_id":{client},"policy":"{policy}"}}\n'
        )

    def flush(self) -> None:
        facts, self._pending = self._pending, []
        handler = logs.HANDLER
        if not facts or handler is None:
            return
        handler.acquire()
        try:
            line = self._line
            handler.stream.write("".join([line(*fact) for fact in facts]))
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

    def _slow(self, token_hash: str, cache: str, client_id: str | None, policy: str) -> None:
        self._logger.info("allow", extra={"outcome": "allow", "reason": "ok", "token": token_hash,
                                          "cache": cache, "client_id": client_id, "policy": policy})
