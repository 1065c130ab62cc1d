"""Structured logs: one JSON object per line. Tokens appear only as :func:`token_hash`."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from typing import Any, TextIO

# The handler installed by setup(); sidecar.core.decision_log writes allow lines to it directly.
HANDLER: logging.StreamHandler[TextIO] | None = None
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def token_hash(token: str) -> str:
    """A short, stable, one-way reference to a token for logs and purge requests.

    12 hex characters of SHA-256: enough to correlate, far too little to recover a token.
    """
    return hashlib.sha256(token.encode()).hexdigest()[:12]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str, separators=(",", ":"))


def setup(level: str, stream: TextIO | None = None) -> None:
    """JSON lines at ``level`` and above to ``stream`` (stderr)."""
    global HANDLER
    handler = HANDLER = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
