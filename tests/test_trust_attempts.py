"""Honest attempts, bounded memory and clean endings, over real sockets with scripted raw nodes:
every failure to reach a node is a recorded attempt that moves on; a node's answer to a bad request
goes back as it is; a request is never sent twice to a node; a slow client pauses the node; a frame
or an answer past its limit ends cleanly; shutdown ends open streams with an in-stream error; a
connection that never finishes its request head is closed."""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp
import attrs
import pytest

from herd_kernel.app import drain
from herd_kernel.hookspecs import hookimpl
from herd_kernel.testing import heartbeat_payload, wait_for

MODEL = "llama3.2:3b"
CHAT = {"model": MODEL, "stream": False, "messages": [{"role": "user", "content": "hi"}]}
FINAL = {"model": MODEL, "created_at": "2026-12-01T00:00:00Z",
         "message": {"role": "assistant", "content": "ok"}, "done": True, "done_reason": "stop",
         "eval_count": 2, "prompt_eval_count": 3}


def reply(status: int, body: dict | bytes, content_type: str = "application/json") -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error",
              503: "Service Unavailable"}.get(status, "X")
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


class RawNode:
    """A scripted node: ``script(index, body, writer)`` answers the index-th request it reads (a
    coroutine; it may close the connection instead). Counts requests and bytes written."""

    def __init__(self, script) -> None:
        self.script = script
        self.requests: list[bytes] = []
        self.connections = 0
        self.written = 0
        self.server: asyncio.base_events.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader, writer):
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
                self.requests.append(body)
                if await self.script(len(self.requests) - 1, body, writer) is False:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def send(self, writer, data: bytes) -> None:
        writer.write(data)
        self.written += len(data)
        await writer.drain()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in self.writers:
                writer.close()
            await self.server.wait_closed()


@pytest.fixture
async def nodes():
    started: list[RawNode] = []

    async def make(script) -> tuple[RawNode, str]:
        node = RawNode(script)
        url = await node.start()
        started.append(node)
        return node, url

    yield make
    for node in started:
        await node.stop()


async def ok_script(index, body, writer, node=None):
    writer.write(reply(200, FINAL))
    await writer.drain()


def answering(status: int, body: dict):
    """A script that answers every request with ``status`` and ``body``."""

    async def script(index, _body, writer):
        writer.write(reply(status, body))
        await writer.drain()

    return script


async def first_and_spare(herd_router, nodes, script):
    """A router with a scripted node that holds the model in memory (tried first) and a well node
    that has it on disk (the spare); returns the router and both nodes."""
    first, first_url = await nodes(script)
    spare, spare_url = await nodes(ok_script)
    router = await herd_router()
    await register(router, "first", first_url)
    await register(router, "spare", spare_url, loaded=(), available=(MODEL,))
    return router, first, spare


async def register(router, node_id, url, *, loaded=(MODEL,), available=()) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/heartbeat", json=heartbeat_payload(
                node_id, url=url, loaded=list(loaded), available=list(available))) as r:
            assert r.status == 200, await r.text()


async def chat(router, body=CHAT, **kw):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/api/chat", json=body, **kw) as r:
            return r.status, dict(r.headers), await r.read()


def last_trace(router):
    return router.services.recent_traces[-1]


def lane(router, node_id):
    return router.services.fleet.queues[(node_id, MODEL)]


# --- attempts -----------------------------------------------------------------------------------


async def test_a_node_url_that_cannot_work_is_an_attempt_that_moves_on(herd_router, nodes):
    good, good_url = await nodes(ok_script)
    router = await herd_router()
    await register(router, "broken", "http://127.0.0.1:11434", loaded=(MODEL,))
    await register(router, "good", good_url, loaded=(), available=(MODEL,))
    # a URL no socket can open: the registry is set directly (heartbeats refuse such URLs)
    state = router.services.fleet.nodes["broken"]
    bad = attrs.evolve(state.endpoints[0], url="http://127.0.0.1:99999")
    state.endpoints, state.serving = (bad,), {key: bad for key in state.serving}
    status, headers, _ = await chat(router)
    assert status == 200
    assert headers["X-Fleet-Node"] == "good" and headers["X-Fleet-Retries"] == "1"
    trace = last_trace(router)
    assert trace.attempts[0].node_id == "broken" and "bad node URL" in trace.attempts[0].outcome
    assert trace.retries == 1 and trace.status == "completed"
    assert len(good.requests) == 1


async def test_a_client_error_goes_back_as_it_is_and_is_not_retried(herd_router, nodes):
    error = {"error": 'option "num_ctx" must be of type integer'}
    # Ollama answers some bad options with a 500
    router, first, spare = await first_and_spare(herd_router, nodes, answering(500, error))
    status, headers, body = await chat(router)
    assert status == 500 and json.loads(body) == error
    assert headers["X-Fleet-Retries"] == "0"
    assert len(first.requests) == 1 and spare.requests == []
    assert lane(router, "first").failed == 0  # the request's fault, not the node's

    first.script = answering(400, {"error": '"llama3.2:3b" does not support thinking'})
    status, headers, body = await chat(router)
    assert status == 400 and "does not support thinking" in json.loads(body)["error"]
    assert spare.requests == [] and lane(router, "first").failed == 0


async def test_a_node_that_is_unwell_is_retried_elsewhere_and_counted(herd_router, nodes):
    crashed = answering(500, {"error": "llama runner process has terminated: signal: killed"})
    router, _first, _spare = await first_and_spare(herd_router, nodes, crashed)
    status, headers, _ = await chat(router)
    assert status == 200 and headers["X-Fleet-Node"] == "spare"
    assert lane(router, "first").failed == 1


async def test_a_reused_connection_dropped_after_sending_is_an_attempt_not_a_resend(
        herd_router, nodes):
    async def script(index, body, writer):
        if index == 0:
            writer.write(reply(200, FINAL))  # keep-alive: the router pools this connection
            await writer.drain()
            return None
        return False  # read the second request, then hang up without a word

    router, dropper, _spare = await first_and_spare(herd_router, nodes, script)
    assert (await chat(router))[0] == 200
    status, headers, _ = await chat(router)
    assert status == 200 and headers["X-Fleet-Node"] == "spare"
    assert headers["X-Fleet-Retries"] == "1"
    assert len(dropper.requests) == 2 and dropper.connections == 1  # never sent twice
    assert "dropped after sending" in last_trace(router).attempts[0].outcome


async def test_a_model_deleted_on_a_node_moves_on_then_is_404_not_502(herd_router, nodes):
    gone = answering(404, {"error": f"model '{MODEL}' not found"})
    router, _first, spare = await first_and_spare(herd_router, nodes, gone)
    status, headers, _ = await chat(router)
    assert status == 200 and headers["X-Fleet-Node"] == "spare"
    fleet = router.services.fleet
    assert MODEL not in fleet.nodes["first"].loaded
    assert MODEL not in fleet.nodes["first"].available
    assert lane(router, "first").failed == 0
    # now the last holder loses it too: the client hears Ollama's 404, not a 502
    spare.script = gone
    status, _headers, body = await chat(router)
    assert status == 404 and json.loads(body) == {"error": f"model '{MODEL}' not found"}


# --- bounded memory -----------------------------------------------------------------------------


async def test_a_slow_client_pauses_a_fast_node(herd_router, nodes):
    line = json.dumps({"model": MODEL, "message": {"role": "assistant", "content": "x" * 1000},
                       "done": False}).encode() + b"\n"
    stop = asyncio.Event()

    async def flood(index, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                     b"Connection: close\r\n\r\n")
        try:
            while not stop.is_set() and node.written < 256 * 2**20:
                await node.send(writer, line * 32)
        except ConnectionError:
            pass
        return False

    node, url = await nodes(flood)
    router = await herd_router()
    await register(router, "fast", url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    port = int(router.url.rsplit(":")[-1])
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    body = json.dumps({**CHAT, "stream": True}).encode()
    writer.write(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    got = 0
    for _ in range(10):  # 2 KB every 50 ms for half a second
        got += len(await reader.read(2048))
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    # what the node managed to write is bounded by socket buffers and the router's high-water
    # mark, not by how fast it can produce (it would have sent 256 MiB by now)
    assert node.written < 16 * 2**20, node.written
    assert got > 0
    writer.close()  # the client leaves: the node's request ends and its slot frees
    await wait_for(lambda: router.services.fleet.node_in_flight.get("fast", 0) == 0)
    stop.set()


async def test_a_stream_with_no_newline_ends_at_the_frame_limit(herd_router, nodes):
    async def endless(index, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                     b"Connection: close\r\n\r\n")
        try:
            await node.send(writer, b'{"model": "llama3.2:3b", "message": ')
            for _ in range(400):  # 4 MiB with no newline at all
                await node.send(writer, b"x" * 10240)
        except ConnectionError:
            pass
        return False

    node, url = await nodes(endless)
    router = await herd_router(env={"FLEET_MAX_FRAME_MB": "0.5"})
    await register(router, "n", url)
    status, _headers, body = await chat(router, {**CHAT, "stream": True})
    assert status == 200
    lines = body.split(b"\n")
    assert len(body) < 64 * 1024  # the unfinished frame was never relayed
    assert "FLEET_MAX_FRAME_MB" in json.loads(lines[0])["error"]
    assert last_trace(router).status == "failed"


async def test_a_whole_answer_over_the_limit_is_a_502(herd_router, nodes):
    async def huge(index, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 2147483648\r\n\r\n")
        try:
            for _ in range(64):
                await node.send(writer, b" " * 65536)
        except ConnectionError:
            pass
        return False

    node, url = await nodes(huge)
    router = await herd_router(env={"FLEET_MAX_RESPONSE_MB": "1"})
    await register(router, "n", url)
    status, _headers, body = await chat(router)
    assert status == 502
    assert "FLEET_MAX_RESPONSE_MB" in json.loads(body)["error"]
    assert len(node.requests) == 1  # not retried: any node would send as much


# --- endings ------------------------------------------------------------------------------------


async def test_shutdown_ends_open_streams_with_an_error_and_refuses_waiters(herd_router, nodes):
    release = asyncio.Event()

    async def stalls(index, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        first = json.dumps({"model": MODEL, "message": {"role": "assistant", "content": "a"},
                            "done": False}).encode() + b"\n"
        writer.write(f"{len(first):x}\r\n".encode() + first + b"\r\n")
        await writer.drain()
        await release.wait()  # then silence, as a stuck runner would
        return False

    node, url = await nodes(stalls)
    router = await herd_router()
    await register(router, "n", url)
    stream = asyncio.ensure_future(chat(router, {**CHAT, "stream": True}))
    await wait_for(lambda: router.services.queues.active)
    waiting = asyncio.ensure_future(chat(router, {**CHAT, "stream": True}))  # one slot: it waits
    await wait_for(lambda: router.services.queues.waiting_total == 1)
    await drain(router.runner, grace=0.3)
    status, _headers, body = await asyncio.wait_for(stream, 10)
    assert status == 200
    lines = [json.loads(x) for x in body.split(b"\n") if x]
    assert lines[0]["message"]["content"] == "a"
    assert lines[-1] == {"error": "the router is shutting down"}
    status, headers, body = await asyncio.wait_for(waiting, 10)
    assert status == 503 and json.loads(body)["error"] == "the router is shutting down"
    assert len(node.requests) == 1  # the waiter never reached the node
    with pytest.raises(aiohttp.ClientConnectionError):  # no longer listening
        await chat(router)
    release.set()


async def test_shutdown_lets_requests_that_finish_in_the_grace_period_finish(herd_router, nodes):
    async def slow(index, body, writer):
        await asyncio.sleep(0.3)
        writer.write(reply(200, FINAL))
        await writer.drain()

    node, url = await nodes(slow)
    router = await herd_router()
    await register(router, "n", url)
    pending = asyncio.ensure_future(chat(router))
    await wait_for(lambda: node.requests)
    await drain(router.runner, grace=5)
    status, _headers, body = await pending
    assert status == 200 and json.loads(body)["done"] is True


async def test_a_connection_that_never_completes_its_head_is_closed(herd_router):
    router = await herd_router(env={"FLEET_HEADER_TIMEOUT": "0.3"})
    port = int(router.url.rsplit(":", 1)[1])
    trickle_reader, trickle = await asyncio.open_connection("127.0.0.1", port)
    trickle.write(b"POST /api/chat HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    silent_reader, silent = await asyncio.open_connection("127.0.0.1", port)  # says nothing
    closed = False
    for _ in range(50):  # a header line every 0.1 s keeps the socket busy, never complete
        await asyncio.sleep(0.1)
        try:
            trickle.write(b"X-A: b\r\n")
            await trickle.drain()
        except ConnectionError:
            closed = True
            break
    assert closed  # the router hung up although bytes kept coming
    assert await asyncio.wait_for(silent_reader.read(), 10) == b""
    trickle.close()
    silent.close()
    async with aiohttp.ClientSession() as http:  # others are served as before
        async with http.get(f"{router.url}/api/tags") as r:
            assert r.status == 200


class BrokenTraceHook:
    @hookimpl
    def herd_request_finished(self, trace):
        raise RuntimeError("analytics plugin bug")


async def test_a_failing_trace_hook_does_not_fail_the_request(herd_router, nodes):
    node, url = await nodes(ok_script)
    router = await herd_router(extra=[BrokenTraceHook()])
    await register(router, "n", url)
    status, _headers, body = await chat(router)
    assert status == 200 and json.loads(body)["done"] is True
    assert router.services.fleet.node_in_flight["n"] == 0


@pytest.mark.parametrize("api", ["ollama", "openai"])
async def test_frames_split_anywhere_arrive_whole_and_unchanged(herd_router, nodes, api):
    if api == "ollama":
        frames = [json.dumps({"model": MODEL, "message": {"role": "assistant", "content": c},
                              "done": False}).encode() + b"\n" for c in ("a", "b\n", "c")]
        frames.append(json.dumps(FINAL).encode() + b"\n")
        path, body, kind = "/api/chat", {**CHAT, "stream": True}, b"application/x-ndjson"
    else:
        frames = [b"data: " + json.dumps({"id": "c1", "choices": [{"index": 0,
                  "delta": {"content": c}}]}).encode() + b"\n\n" for c in ("a", "b", "c")]
        frames.append(b"data: [DONE]\n\n")
        path, body, kind = "/v1/chat/completions", {**CHAT, "stream": True}, b"text/event-stream"
    wire = b"".join(frames)

    async def trickle(index, _body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\nConnection: close\r\n\r\n")
        for i in range(0, len(wire), 3):  # three bytes at a time: delimiters split too
            writer.write(wire[i:i + 3])
            await writer.drain()
            await asyncio.sleep(0.001)
        return False

    _node, url = await nodes(trickle)
    router = await herd_router()
    await register(router, "n", url)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}{path}", json=body) as r:
            assert r.status == 200
            received = await r.read()
    assert received == wire
    assert last_trace(router).status == "completed"
