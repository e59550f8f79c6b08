"""Plain regression tests for what the property suite (tests/test_property_routes.py) found, each
over a real socket against the real router."""

from __future__ import annotations

import asyncio
import logging

import pytest


async def send_raw(router, data: bytes) -> bytes:
    """Write ``data`` on a new connection and read until the router closes it."""
    port = int(router.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


BAD_HEADS = [
    # a header value no HTTP parser takes
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nX-Request-Id: id\x00\r\nContent-Length: 2\r\n\r\n{}",
    # a body in an encoding aiohttp cannot decode without an extra package (br: Brotli)
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{}",
    # garbage after the body of a request that said ``Connection: close``
    b"POST /api/tags HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}xx",
]


@pytest.mark.parametrize("head", BAD_HEADS, ids=["nul-in-header", "brotli", "data-after-close"])
async def test_a_request_aiohttp_cannot_read_is_a_400_and_no_error_traceback(
        herd_router, caplog, head):
    """Before: aiohttp logged each one at ERROR with a full traceback ("Error handling request"),
    so any client on the network could flood the router's log with tracebacks. Now: one INFO
    line, and the client still gets its 400 (or, with Brotli installed, the router's 415)."""
    router = await herd_router(plugins="backend-ollama")
    with caplog.at_level(logging.INFO, logger="aiohttp.server"):
        answer = await send_raw(router, head)
    assert answer.split(b" ", 2)[1] in (b"400", b"415"), answer[:200]
    server = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert server, "the refusal is still logged"
    assert all(r.levelno < logging.ERROR and not r.exc_info for r in server), \
        [(r.levelname, r.getMessage()) for r in server]
