"""Single-flight: concurrent callers for one key share one call.

Used wherever a burst would otherwise repeat an IdP call: a new token (the token cache), the
discovery document, the JWK Set. The shared call runs as its own task, so a caller that goes away
(a client disconnect cancels its check) does not cancel the call the others wait for; its
exception is always retrieved, so a call nobody waits for any more logs no "never retrieved".
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class SingleFlight(Generic[K, V]):
    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: dict[K, asyncio.Future[V]] = {}

    def __contains__(self, key: K) -> bool:
        return key in self._pending

    def __len__(self) -> int:
        return len(self._pending)

    async def run(self, key: K, call: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """``(result, True)`` for the caller that started the call, ``(result, False)`` for joiners."""
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending), False
        task = asyncio.ensure_future(self._call(key, call))
        task.add_done_callback(_retrieve)
        self._pending[key] = task
        return await asyncio.shield(task), True

    async def _call(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        try:
            return await call()
        finally:
            del self._pending[key]
