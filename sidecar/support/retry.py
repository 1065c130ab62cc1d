"""Retrying a start-up step until it is done (discovery, the first JWK Set): readiness waits for it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

FIRST_DELAY = 0.5
MAX_DELAY = 30.0


async def until_done(done: Callable[[], bool], attempt: Callable[[], Awaitable[object]]) -> None:
    """Call ``attempt`` until ``done()``, doubling the pause from 0.5 s up to 30 s. Failures are
    the attempt's to log; cancellation ends the loop."""
    delay = FIRST_DELAY
    while not done():
        with contextlib.suppress(Exception):
            await attempt()
        if done():
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, MAX_DELAY)
