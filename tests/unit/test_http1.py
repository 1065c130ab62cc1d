"""The lean client of the introspection call (sidecar/idp/http1.py) against a scripted server on
127.0.0.1: connections kept and reused, never an answer read for the wrong request, every way an
answer can be framed, the connection limit. (TLS and the failure kinds: test_idp_failures.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from sidecar.idp.failures import IdpError, IdpFailure
from sidecar.idp.http1 import MAX_HEAD_BYTES, FormPoster

Script = Callable[[int, int], bytes]  # (connection number, request number on it) -> what the server writes


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body), extra, body)


class Server:
    """Answers each request with ``script(connection, request)`` (and closes the connection after
    the answers ``closing`` names); counts connections."""

    def __init__(self, script: Script, delay: float = 0.0, closing: Callable[[int, int], bool] | None = None) -> None:
        self.script = script
        self.delay = delay
        self.closing = closing or (lambda conn, req: False)
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/introspect"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number, self.open = self.connections, self.open + 1
        self.most_open = max(self.most_open, self.open)
        try:
            for request in range(1, 1000):
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                await reader.readexactly(length)
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(self.script(number, request))
                await writer.drain()
                if self.closing(number, request):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def poster() -> AsyncIterator[FormPoster]:
    opened = FormPoster(None, limit=2, user_agent="test")
    yield opened
    await opened.close()


async def serve(script: Script, delay: float = 0.0,
                closing: Callable[[int, int], bool] | None = None) -> tuple[Server, str]:
    server = Server(script, delay, closing)
    return server, await server.start()


async def post(poster: FormPoster, url: str, timeout: float = 2.0, max_bytes: int = 1024) -> bytes:
    answer = await poster.post(url, b"token=t", {"Content-Type": "application/x-www-form-urlencoded"},
                               timeout=timeout, connect_timeout=0.5, max_bytes=max_bytes)
    assert answer.status == 200 and answer.headers["content-type"] == "application/json"
    return answer.body


async def test_sequential_calls_share_one_kept_connection(poster: FormPoster) -> None:
    server, url = await serve(lambda conn, req: ok(b'{"n": %d}' % req))
    for n in range(1, 6):
        assert await post(poster, url) == b'{"n": %d}' % n
    assert server.connections == 1
    await server.close()


async def test_bytes_past_an_answer_are_never_read_as_the_next_answer(poster: FormPoster) -> None:
    # The first connection answers twice to one request: the second answer must go nowhere.
    server, url = await serve(
        lambda conn, req: ok(b'{"conn": %d}' % conn) + (ok(b'{"forged": 1}') if conn == 1 else b""))
    assert await post(poster, url) == b'{"conn": 1}'
    assert await post(poster, url) == b'{"conn": 2}'  # a new connection, its own answer
    assert server.connections == 2
    await server.close()


async def test_bytes_that_arrive_between_calls_close_the_connection(poster: FormPoster) -> None:
    server, url = await serve(lambda conn, req: ok(b'{"conn": %d}' % conn))
    assert await post(poster, url) == b'{"conn": 1}'
    # The server speaks while no request is out: the idle connection is closed, not kept.
    (idle,) = [c for connections in poster._idle.values() for c in connections]
    assert idle.transport is not None
    idle.data_received(ok(b'{"forged": 1}'))
    assert idle.closed
    assert await post(poster, url) == b'{"conn": 2}'
    await server.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\n{\"n\":\r\n3\r\n 1}\r\n0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b'{"n": 1}'),
    b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + ok(b'{"n": 1}'),
], ids=["chunked", "100 continue", "103 early hints"])
async def test_every_framing_of_an_answer_is_read_whole(poster: FormPoster, answer: bytes) -> None:
    server, url = await serve(lambda conn, req: answer)
    assert (await post(poster, url)).replace(b" ", b"") == b'{"n":1}'
    assert (await post(poster, url)).replace(b" ", b"") == b'{"n":1}'
    assert server.connections == 1  # kept after each
    await server.close()


async def test_an_answer_that_ends_with_the_connection_is_read_whole_and_not_kept(poster: FormPoster) -> None:
    server, url = await serve(lambda conn, req: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                                b"Connection: close\r\n\r\n{\"n\": 1}", closing=lambda conn, req: True)
    assert await post(poster, url) == b'{"n": 1}'
    assert await post(poster, url) == b'{"n": 1}'
    assert server.connections == 2
    await server.close()


@pytest.mark.parametrize(("answer", "kind"), [
    (ok(b"x" * 2000), IdpFailure.TOO_LARGE),
    (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"p" * MAX_HEAD_BYTES + b"\r\n\r\n", IdpFailure.GARBAGE),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", IdpFailure.GARBAGE),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}", IdpFailure.GARBAGE),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", IdpFailure.TRUNCATED),
    (b"NOT HTTP\r\n\r\n", IdpFailure.GARBAGE),
], ids=["too large", "head too large", "two lengths", "length and chunked", "truncated", "not http"])
async def test_an_answer_that_cannot_be_read_whole_fails_and_closes_its_connection(
    poster: FormPoster, answer: bytes, kind: IdpFailure
) -> None:
    # The server closes after its (bad) answer; the next call gets a connection of its own.
    server, url = await serve(lambda conn, req: answer if conn == 1 else ok(b'{"conn": %d}' % conn),
                              closing=lambda conn, req: conn == 1)
    with pytest.raises(IdpError) as raised:
        await post(poster, url)
    assert raised.value.kind is kind
    assert await post(poster, url) == b'{"conn": 2}'
    await server.close()


async def test_a_call_past_its_time_closes_its_connection_so_a_late_answer_is_read_by_nobody(
    poster: FormPoster
) -> None:
    server, url = await serve(lambda conn, req: ok(b'{"conn": %d}' % conn), delay=0.3)
    with pytest.raises(TimeoutError):
        await post(poster, url, timeout=0.1)
    assert await post(poster, url) == b'{"conn": 2}'
    await server.close()


async def test_at_most_the_limit_of_connections_are_open_and_the_other_calls_wait(poster: FormPoster) -> None:
    server, url = await serve(lambda conn, req: ok(b'{"n": 1}'), delay=0.05)
    answers = await asyncio.gather(*(post(poster, url) for _ in range(10)))
    assert answers == [b'{"n": 1}'] * 10
    assert server.most_open == 2 and server.connections == 2
    await server.close()


async def test_an_idle_connection_the_server_closed_is_not_taken_again(
    poster: FormPoster
) -> None:
    server, url = await serve(lambda conn, req: ok(b'{"n": 1}'), closing=lambda conn, req: True)
    assert await post(poster, url) == b'{"n": 1}'
    await asyncio.sleep(0.05)  # the server closed it after its one answer
    assert await post(poster, url) == b'{"n": 1}'  # a closed idle connection is not taken
    assert server.connections == 2
    await server.close()


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    poster = FormPoster(None, limit=1, user_agent="test")
    with pytest.raises(ValueError, match="line break"):
        asyncio.run(poster.post("http://127.0.0.1:9/x", b"", {"Authorization": "Basic x\r\nX-Evil: 1"},
                                timeout=1, connect_timeout=1, max_bytes=10))
