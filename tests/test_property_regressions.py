"""Plain regression tests for what the property suite (tests/test_property_routes.py) found, each
over a real socket against the real router."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest
from herd_analytics import store_of
from structlog.testing import capture_logs

MODEL = "llama3.2:3b"


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
    # garbage after the body of a request that said ``Connection: close``
    b"POST /api/tags HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}xx",
]


@pytest.mark.parametrize("head", BAD_HEADS, ids=["nul-in-header", "data-after-close"])
async def test_a_request_aiohttp_cannot_read_is_a_400_and_no_error_traceback(
        herd_router, caplog, head):
    """Before: aiohttp logged each one at ERROR with a full traceback ("Error handling request"),
    so any client on the network could flood the router's log with tracebacks. Now: one INFO
    line, and the client still gets its 400. (A ``br`` body, which aiohttp used to refuse the
    same way, is now the router's own JSON 415: tests/test_trust_bodies.py.)"""
    router = await herd_router(plugins="backend-ollama")
    with caplog.at_level(logging.INFO, logger="aiohttp.server"):
        answer = await send_raw(router, head)
    assert answer.split(b" ", 2)[1] == b"400", answer[:200]
    server = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert server, "the refusal is still logged"
    assert all(r.levelno < logging.ERROR and not r.exc_info for r in server), \
        [(r.levelname, r.getMessage()) for r in server]


async def sim_router(herd_router):
    """A router with one simulated node holding MODEL, registered by heartbeat."""
    import attrs
    from herd_sim import PROFILES, SimFleet

    from herd_kernel.testing import heartbeat_payload

    fleet = SimFleet([attrs.evolve(PROFILES["medium"], name="s1", loaded=(MODEL,),
                                   models=(MODEL,))], time_scale=0.01)
    await fleet.start()
    router = await herd_router(plugins="backend-ollama,analytics")
    payload = heartbeat_payload("s1", url=fleet.nodes["s1"].url, loaded=[MODEL])
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/heartbeat", json=payload) as r:
            assert r.status == 200
    return router, fleet


async def rows_for(router, request_id: str) -> int:
    await store_of(router.services).flush()
    async with store_of(router.services).db.execute(
            "SELECT COUNT(*) FROM request_traces WHERE request_id = ?", (request_id,)) as cur:
        [(count,)] = await cur.fetchall()
    return count


def header_of(answer: bytes, name: bytes) -> str:
    head = answer.split(b"\r\n\r\n", 1)[0]
    return next(line.split(b":", 1)[1].strip().decode("utf-8", "surrogateescape")
                for line in head.split(b"\r\n") if line.lower().startswith(name.lower() + b":"))


async def test_a_request_id_that_is_not_utf8_is_replaced_and_the_trace_is_kept(herd_router):
    """Before: ``X-Request-Id: \\xc7`` became the request id '\\udcc7'; SQLite refused it and the
    trace write dropped the whole batch ("trace write failed"). Now the router makes its own id
    for an id it cannot echo or store, answers with it, and its trace is in the store."""
    router, fleet = await sim_router(herd_router)
    try:
        body = json.dumps({"model": MODEL, "stream": False, "messages": [],
                           "options": {"num_predict": 2}}).encode()
        with capture_logs() as entries:
            answer = await send_raw(router, b"POST /api/chat HTTP/1.1\r\nHost: x\r\n"
                                    b"Connection: close\r\nX-Request-Id: \xc7\r\n"
                                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            assert answer.split(b" ", 2)[1] == b"200", answer[:300]
            request_id = header_of(answer, b"X-Request-Id")
            assert request_id.isascii() and len(request_id) == 16
            assert await rows_for(router, request_id) == 1
        assert not [e for e in entries if e["log_level"] == "error"], entries
    finally:
        await fleet.stop()


async def test_a_model_name_with_a_lone_surrogate_is_traced(herd_router):
    """Before: ``{"model": "\\ud800x"}`` (valid JSON: an escaped lone surrogate) got its 404, and
    its trace, with the model name in it, failed to write and took its batch with it."""
    router, fleet = await sim_router(herd_router)
    try:
        with capture_logs() as entries:
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{router.url}/api/chat",
                                     data=b'{"model": "\\ud800x", "messages": []}',
                                     headers={"X-Request-Id": "lone-surrogate-1"}) as r:
                    assert r.status == 404
                    assert "not found" in (await r.json())["error"]
            assert await rows_for(router, "lone-surrogate-1") == 1
        assert not [e for e in entries if e["log_level"] == "error"], entries
        async with store_of(router.services).db.execute(
                "SELECT model FROM request_traces WHERE request_id = 'lone-surrogate-1'") as cur:
            [(model,)] = await cur.fetchall()
        assert model == "\ufffdx"  # the lone surrogate stored as U+FFFD
    finally:
        await fleet.stop()
