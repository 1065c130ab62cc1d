"""Background tasks that live as long as their owner (polling, discovery, subscriptions): started
one by one, cancelled and awaited together when the owner closes.

The wait is bounded: a task that does not end when cancelled (a library's shielded teardown stuck
on a dead connection: redis-py's ``PubSub.aclose`` cannot be cancelled) must not hold a shutdown
or the retirement of a reload's replaced parts forever. It is named in a warning and left to the
event loop's end."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)
CANCEL_WAIT = 5.0  # seconds a cancelled task may take to end


class Background:
    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[Any]] = []

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        self._tasks.append(asyncio.create_task(work, name=getattr(work, "__qualname__", None)))

    async def cancel(self, wait: float = CANCEL_WAIT) -> None:
        """Cancel every task and wait until each has ended, at most ``wait`` seconds."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        done, stuck = await asyncio.wait(tasks, timeout=wait)
        for task in done:
            if not task.cancelled() and (error := task.exception()) is not None:
                log.warning("a background task had failed", extra={"task": task.get_name(),
                                                                    "error_type": type(error).__name__})
        for task in stuck:
            log.warning("a background task did not end when cancelled; left behind",
                        extra={"task": task.get_name(), "wait": wait})
