"""Whole bodies and strict parsing, over real sockets: a body is read to its end however it
arrives (split writes, chunked, gzip, deflate) and under one limit counted after inflation; numbers
that are not numbers, giant integers and deep nesting get a 400 in the API's own shape; keys that
differ only in case mean what they mean to Ollama's Go decoder. A recording fake node shows the
bytes that reached it."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from herd_kernel.api import RouteDef
from herd_kernel.hookspecs import hookimpl
from herd_kernel.testing import heartbeat_payload

MODEL = "llama3.2:3b"


class FakeNode:
    """An Ollama stand-in that records every body it gets and answers a fixed chat reply."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> FakeNode:
        app = web.Application(client_max_size=1024**3)
        for path in ("/api/chat", "/api/generate", "/v1/chat/completions"):
            app.router.add_post(path, self.answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def answer(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.bodies.append(body)
        model = json.loads(body).get("model", "?")
        return web.json_response({"model": model, "created_at": "2026-12-01T00:00:00Z",
                                  "message": {"role": "assistant", "content": "ok"},
                                  "done": True, "done_reason": "stop", "eval_count": 1})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def node():
    fake = await FakeNode().start()
    yield fake
    await fake.stop()


async def register(router, node_id: str, url: str, models=(MODEL,)) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/heartbeat",
                             json=heartbeat_payload(node_id, url=url, loaded=list(models))) as r:
            assert r.status == 200, await r.text()


@pytest.fixture
async def router(herd_router, node):
    router = await herd_router(env={"FLEET_MAX_BODY_MB": "1", "FLEET_BODY_TIMEOUT": "0.5"})
    await register(router, "n1", node.url)
    return router


def port_of(router) -> int:
    return int(router.url.rsplit(":", 1)[1])


async def raw_exchange(port: int, parts: list[bytes], pause: float = 0.2) -> tuple[int, bytes]:
    """Send ``parts`` as separate writes with pauses between them; the status and body back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for index, part in enumerate(parts):
            if index:
                await asyncio.sleep(pause)
            writer.write(part)
            await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        body = await asyncio.wait_for(reader.readexactly(length), 10)
        return status, body
    finally:
        writer.close()


def request_head(path: str, length: int | None = None, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


CHAT = json.dumps({"model": MODEL, "stream": False,
                   "messages": [{"role": "user", "content": "why is the sky blue?"}]}).encode()


# --- whole bodies -------------------------------------------------------------------------------


async def test_body_in_two_writes_200ms_apart_is_read_whole(router, node):
    status, body = await raw_exchange(
        port_of(router), [request_head("/api/chat", len(CHAT)) + CHAT[:40], CHAT[40:]])
    assert status == 200, body
    assert node.bodies == [CHAT]


async def test_300kb_prompt_in_many_writes_reaches_the_node_whole(router, node):
    big = json.dumps({"model": MODEL, "stream": False,
                      "messages": [{"role": "user", "content": "é" * 150_000}]}).encode()
    parts = [request_head("/api/chat", len(big))]
    parts += [big[i:i + 16384] for i in range(0, len(big), 16384)]
    status, body = await raw_exchange(port_of(router), parts, pause=0.01)
    assert status == 200, body
    assert node.bodies == [big]


async def test_chunked_body_is_read_whole(router, node):
    async def pieces():
        for i in range(0, len(CHAT), 7):
            yield CHAT[i:i + 7]
            await asyncio.sleep(0.005)

    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/api/chat", data=pieces()) as r:
            assert r.status == 200, await r.text()
            assert r.request_info.headers.get("Transfer-Encoding") == "chunked"
    assert node.bodies == [CHAT]


async def test_chunked_body_over_the_limit_is_413_not_400(router, node):
    async def pieces():
        yield b'{"model": "llama3.2:3b", "prompt": "'
        for _ in range(40):  # 1.25 MiB against a 1 MiB limit
            yield b"x" * 32768
        yield b'"}'

    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/api/generate", data=pieces()) as r:
            assert r.status == 413
            assert "too large" in (await r.json())["error"]
    assert node.bodies == []


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_bodies_are_inflated_and_forwarded_plain(router, node, encoding):
    packed = gzip.compress(CHAT) if encoding == "gzip" else zlib.compress(CHAT)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/api/chat", data=packed,
                             headers={"Content-Encoding": encoding,
                                      "Content-Type": "application/json"}) as r:
            assert r.status == 200, await r.text()
    assert node.bodies == [CHAT]


async def test_gzip_bomb_stops_at_the_limit_with_413(router, node):
    # 256 MiB of zeros in about 250 KB: refused once 1 MiB has been inflated
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = b"0" * (1024 * 1024)
    bomb = b"".join(packer.compress(zeros) for _ in range(256)) + packer.flush()
    assert len(bomb) < 400_000
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/api/generate", data=bomb,
                             headers={"Content-Encoding": "gzip"}) as r:
            assert r.status == 413
            assert "too large" in (await r.json())["error"]
        # and the router is fine afterwards
        async with http.post(f"{router.url}/api/chat", data=CHAT) as r:
            assert r.status == 200
    assert node.bodies == [CHAT]


async def test_unknown_content_encoding_is_415(router, node):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/api/chat", data=CHAT,
                             headers={"Content-Encoding": "compress"}) as r:
            assert r.status == 415
            assert "Content-Encoding" in (await r.json())["error"]
        async with http.post(f"{router.url}/v1/chat/completions", data=CHAT,
                             headers={"Content-Encoding": "zz"}) as r:
            assert r.status == 415
            assert "Content-Encoding" in (await r.json())["error"]["message"]
    assert node.bodies == []


async def test_corrupt_gzip_is_a_400(router, node):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/api/chat", data=b"\x1f\x8b\x08\x00garbage" * 10,
                             headers={"Content-Encoding": "gzip"}) as r:
            assert r.status == 400
            assert "error" in await r.json()


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions", "/heartbeat"])
async def test_client_that_goes_silent_mid_body_gets_408_and_the_socket_closes(router, node, path):
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(router))
    writer.write(request_head(path, len(CHAT)) + CHAT[:20])
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)  # read() returns once the router closes
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"nothing arrived" in answer
    assert node.bodies == []


# --- strict numbers -----------------------------------------------------------------------------

BAD_NUMBERS = [
    ('{"model": "%s", "options": {"num_ctx": NaN}}', "NaN"),
    ('{"model": "%s", "options": {"num_ctx": Infinity}}', "Infinity"),
    ('{"model": "%s", "options": {"num_predict": -Infinity}}', "Infinity"),
    ('{"model": "%s", "options": {"num_ctx": 1e400}}', "out of range"),
    ('{"model": "%s", "options": {"num_predict": ' + "9" * 5000 + "}}", "out of range"),
    ('{"model": "%s", "options": {"num_ctx": 1e300}}', "out of range"),
    ('{"model": "%s", "options": {"num_predict": ' + "9" * 40 + "}}", "out of range"),
    ('{"model": "%s", "options": {"temperature": NaN}}', "NaN"),
]


@pytest.mark.parametrize("template,words", BAD_NUMBERS)
async def test_native_bad_numbers_are_400(router, node, template, words):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/api/chat", data=template % MODEL) as r:
            assert r.status == 400
            assert words in (await r.json())["error"]
    assert node.bodies == []


@pytest.mark.parametrize("value", ["NaN", "1e400", "9" * 5000, "1e30", '"12"', "true"])
async def test_openai_bad_max_tokens_is_400_in_openai_shape(router, node, value):
    raw = '{"model": "%s", "messages": [], "max_tokens": %s}' % (MODEL, value)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/v1/chat/completions", data=raw) as r:
            assert r.status == 400
            error = (await r.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert node.bodies == []


async def test_deep_nesting_is_400_not_a_crash(router, node):
    raw = '{"model": "%s", "messages": %s}' % (MODEL, "[" * 100_000 + "]" * 100_000)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/api/chat", data=raw) as r:
            assert r.status == 400
            assert "nested too deeply" in (await r.json())["error"]
        async with http.post(f"{router.url}/api/chat", data=CHAT) as r:
            assert r.status == 200
    assert node.bodies == [CHAT]


@pytest.mark.parametrize("value", ["NaN", "1e400", "9" * 5000, "-Infinity"])
async def test_heartbeat_bad_numbers_are_400(router, value):
    payload = json.dumps(heartbeat_payload("n2")).replace('"utilization_pct": 5.0',
                                                          f'"utilization_pct": {value}')
    assert value in payload
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/heartbeat", data=payload) as r:
            assert r.status == 400
            assert "invalid heartbeat" in (await r.json())["error"]
    assert "n2" not in router.services.fleet.nodes


async def test_large_integers_within_float_range_are_forwarded_untouched(router, node):
    raw = ('{"model": "%s", "stream": false, "messages": [], "options": {"seed": %s}}'
           % (MODEL, "1" * 30)).encode()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/api/chat", data=raw) as r:
            assert r.status == 200
    assert node.bodies == [raw]


# --- keys that differ only in case --------------------------------------------------------------


async def test_keys_differing_in_case_resolve_as_go_does(herd_router):
    small, big = await FakeNode().start(), await FakeNode().start()
    try:
        router = await herd_router()
        await register(router, "small-node", small.url, models=("llama3.2:1b",))
        await register(router, "big-node", big.url, models=("llama3.3:70b",))
        raw = b'{"model": "llama3.2:1b", "MODEL": "llama3.3:70b", "stream": false, "messages": []}'
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{router.url}/api/chat", data=raw) as r:
                assert r.status == 200
                assert r.headers["X-Fleet-Node"] == "big-node"
                assert r.headers["X-Fleet-Served-Model"] == "llama3.3:70b"
            # the later spelling wins, whichever it is
            raw2 = b'{"Model": "llama3.3:70b", "model": "llama3.2:1b", "stream": false}'
            async with http.post(f"{router.url}/api/chat", data=raw2) as r:
                assert r.status == 200
                assert r.headers["X-Fleet-Node"] == "small-node"
            # a capitalised key alone is the field, as Go matches it
            async with http.post(f"{router.url}/api/chat",
                                 data=b'{"MODEL": "llama3.2:1b", "Stream": false}') as r:
                assert r.status == 200
                assert r.headers["X-Fleet-Node"] == "small-node"
                assert r.content_type == "application/json"  # Stream: false was honoured
        assert big.bodies == [raw]  # forwarded as sent: the node's decoder resolves it the same
    finally:
        await small.stop()
        await big.stop()


# --- unexpected errors --------------------------------------------------------------------------


class Exploding:
    """A backend whose route raises, to see what a client and the log get."""

    name = "exploding"
    modalities = ()

    def routes(self, services):
        async def handler(request):
            raise RuntimeError("kaboom")

        return [RouteDef(method="POST", path="/api/explode", handler=handler)]

    async def probe(self, ctx):
        return {}


class ExplodingPlugin:
    @hookimpl
    def herd_backends(self, config):
        return [Exploding()]


async def test_unexpected_error_is_logged_with_traceback_and_request_id(herd_router):
    router = await herd_router(extra=[ExplodingPlugin()])
    with capture_logs() as logs:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{router.url}/api/explode", data=b"{}",
                                 headers={"X-Request-Id": "req-77"}) as r:
                assert r.status == 500
                assert r.headers["X-Request-Id"] == "req-77"
                text = await r.text()
    assert "kaboom" not in text and "Traceback" not in text
    [entry] = [e for e in logs if e["event"] == "unhandled error"]
    assert entry["request_id"] == "req-77"
    assert entry["exc_info"] is True and entry["log_level"] == "error"


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip, gzip"])
async def test_encodings_the_router_does_not_inflate_are_415_json(router, node, encoding):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/api/chat", data=b"\x00\x01\x02",
                             headers={"Content-Encoding": encoding}) as r:
            assert r.status == 415
            assert "Content-Encoding" in (await r.json())["error"]
    assert node.bodies == []


async def test_gzip_in_two_members_and_raw_deflate_are_read(router, node):
    half = len(CHAT) // 2
    two_members = gzip.compress(CHAT[:half]) + gzip.compress(CHAT[half:])
    raw_deflate = zlib.compress(CHAT)[2:-4]  # no zlib header: what some clients send
    async with aiohttp.ClientSession() as http:
        for encoding, data in (("gzip", two_members), ("deflate", raw_deflate)):
            async with http.post(f"{router.url}/api/chat", data=data,
                                 headers={"Content-Encoding": encoding}) as r:
                assert r.status == 200, await r.text()
        async with http.post(f"{router.url}/api/chat", data=gzip.compress(CHAT)[:-12],
                             headers={"Content-Encoding": "gzip"}) as r:
            assert r.status == 400
            assert "cut short" in (await r.json())["error"]
    assert node.bodies == [CHAT, CHAT]
