"""The one fair semaphore: when a slot frees, the waiting owners get it in turn (round robin), not
the longest waiter — an owner with many waiters queued cannot make another owner's one waiter
wait behind all of them.

The owner of an acquisition is :data:`OWNER` in the caller's context: whoever charges the work to
a client sets it (core/admission.py, around a cache miss) and whoever guards the scarce resource
acquires under it (the IdP guard's introspection slots), without either knowing the other. An
unset owner is one owner of its own (``None``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Hashable
from contextvars import ContextVar

OWNER: ContextVar[Hashable] = ContextVar("fair_owner", default=None)


class FairSlots:
    """``capacity`` slots; :meth:`acquire` waits its owner's turn, :meth:`release` gives the slot on."""

    __slots__ = ("_free", "_queues", "_turns")

    def __init__(self, capacity: int) -> None:
        self._free = capacity
        self._queues: dict[Hashable, deque[asyncio.Future[None]]] = {}
        self._turns: deque[Hashable] = deque()  # owners with waiters, in the order they are served

    async def acquire(self) -> None:
        """A slot for the current :data:`OWNER` (cancellable: a cancelled waiter leaves its queue)."""
        if self._free > 0 and not self._turns:
            self._free -= 1
            return
        owner = OWNER.get()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(owner)
        if queue is None:
            queue = self._queues[owner] = deque()
            self._turns.append(owner)
        queue.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot came with the cancellation: pass it on
            else:
                self._leave(owner, future)
            raise

    def release(self) -> None:
        while self._turns:
            owner = self._turns.popleft()
            queue = self._queues[owner]
            future = queue.popleft()
            if queue:
                self._turns.append(owner)  # its next waiter, after every other owner's
            else:
                del self._queues[owner]
            if not future.done():  # (one cancelled but not yet resumed is skipped)
                future.set_result(None)
                return
        self._free += 1

    def _leave(self, owner: Hashable, future: asyncio.Future[None]) -> None:
        queue = self._queues.get(owner)
        if queue is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(future)
        if not queue:
            del self._queues[owner]
            self._turns.remove(owner)
