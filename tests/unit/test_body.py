"""read_bounded: the whole body however it arrives, and never more than the limit."""

from __future__ import annotations

import asyncio
from unittest import mock

import aiohttp
import pytest

from sidecar.support.body import BodyTooLarge, read_bounded


def stream(*pieces: bytes) -> aiohttp.StreamReader:
    reader = aiohttp.StreamReader(mock.Mock(_reading_paused=False), limit=2**16, loop=asyncio.get_running_loop())

    async def feed() -> None:
        for piece in pieces:
            await asyncio.sleep(0.001)
            reader.feed_data(piece)
        reader.feed_eof()

    asyncio.get_running_loop().create_task(feed())
    return reader


async def test_a_body_in_several_pieces_is_read_whole() -> None:
    assert await read_bounded(stream(b'{"a"', b": 1", b"}"), 100) == b'{"a": 1}'


async def test_more_than_the_limit_is_refused_whether_declared_or_received() -> None:
    with pytest.raises(BodyTooLarge):
        await read_bounded(stream(b"x" * 60, b"x" * 60), 100)
    with pytest.raises(BodyTooLarge):
        await read_bounded(stream(b"{}"), 100, declared=101)
    assert await read_bounded(stream(b"x" * 100), 100) == b"x" * 100
