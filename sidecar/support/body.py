"""Reading a whole HTTP body with a size bound, for every JSON body we parse (IdP answers, the
JWK Set, discovery metadata, purge requests).

``StreamReader.read(n)`` returns as soon as *some* bytes have arrived: parsing its result would
parse a partial body whenever the body spans several packets. A short body (the peer closed
before ``Content-Length``) raises ``aiohttp.ClientPayloadError`` from the iteration.
"""

from __future__ import annotations

import aiohttp


class BodyTooLarge(ValueError):
    """The body (declared or received) is larger than the limit."""


async def read_bounded(content: aiohttp.StreamReader, limit: int, declared: int | None = None) -> bytes:
    """The whole body; :class:`BodyTooLarge` as soon as it (or its Content-Length) exceeds ``limit``."""
    if (declared or 0) > limit:
        raise BodyTooLarge(f"declared {declared} bytes, limit {limit}")
    body = bytearray()
    async for chunk in content.iter_any():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"more than {limit} bytes")
    return bytes(body)
