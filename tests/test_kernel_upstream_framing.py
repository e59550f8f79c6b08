"""The upstream client's framing of node answers (httptools/llhttp) against a raw loopback server
that writes hand-made answers in small pieces: chunked extensions and trailers, one byte per
write, bodiless statuses, read-to-close bodies, malformed answers and the keep-alive rules."""

from __future__ import annotations

import asyncio

import pytest

from herd_kernel.upstream import Upstream, UpstreamError


class Node:
    """A raw TCP server: every request on a connection gets the next scripted answer, written in
    ``step``-byte pieces with a pause between them (``step=None``: in one write). After an answer
    marked ``hang_up`` the server closes the connection; otherwise it keeps it open."""

    def __init__(self, *answers: bytes | tuple[bytes, str], step: int | None = None) -> None:
        self.answers = list(answers)
        self.step = step
        self.connections = 0
        self.requests = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                self.requests += 1
                answer = self.answers.pop(0)
                data, action = answer if isinstance(answer, tuple) else (answer, "")
                step = self.step or len(data) or 1
                for start in range(0, len(data), step):
                    writer.write(data[start:start + step])
                    await writer.drain()
                    if self.step:
                        await asyncio.sleep(0.001)
                if action == "hang_up":
                    writer.close()
                    return
            await reader.read()  # keep the connection until the client lets go
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()


@pytest.fixture
async def client():
    upstream = Upstream(connect_timeout=2, read_timeout=2)
    yield upstream
    await upstream.close()


def answer(body: bytes, *head: str) -> bytes:
    lines = ["HTTP/1.1 200 OK", *head, f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def fetch(client: Upstream, url: str) -> tuple[int, bytes, bool]:
    response = await client.post(url, "/api/chat", b"{}", {})
    body = await response.read()
    response.release()
    return response.status, body, response.keep_alive


# --- framing ----------------------------------------------------------------------------------


CHUNKED_WITH_EXTRAS = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
    b"Transfer-Encoding: chunked\r\nTrailer: X-Checksum, X-Done\r\n\r\n"
    b"7;name=value;quoted=\"a;b=c\"\r\n{\"a\":1}\r\n"
    b"1;lone\r\n\n\r\n"
    b"A\r\n{\"b\":\"xy\"}\r\n"
    b"0;last=1\r\nX-Checksum: abc\r\nX-Done: yes\r\n\r\n"
)


@pytest.mark.parametrize("step", [None, 5])
async def test_chunked_extensions_and_trailers_are_read_past_and_the_connection_kept(
        client, step):
    node = Node(CHUNKED_WITH_EXTRAS, answer(b"next"), step=step)
    url = await node.start()
    response = await client.post(url, "/api/chat", b"{}", {})
    assert response.headers["content-type"] == "application/x-ndjson"
    assert await response.read() == b'{"a":1}\n{"b":"xy"}'
    assert "x-checksum" not in response.headers  # trailers are not the head's headers
    response.release()
    assert await fetch(client, url) == (200, b"next", True)
    assert node.connections == 1  # the trailers were consumed: the connection was reusable
    await node.stop()


async def test_an_answer_written_one_byte_at_a_time(client):
    node = Node(b"HTTP/1.1 100 Continue\r\n\r\n" + CHUNKED_WITH_EXTRAS,
                answer(b'{"done":true}', "Content-Type: application/json"), step=1)
    url = await node.start()
    response = await client.post(url, "/api/chat", b"{}", {})
    assert response.status == 200 and response.headers["trailer"] == "X-Checksum, X-Done"
    parts = []
    while chunk := await response.readany():
        parts.append(chunk)
    assert b"".join(parts) == b'{"a":1}\n{"b":"xy"}'
    response.release()
    assert await fetch(client, url) == (200, b'{"done":true}', True)
    assert node.connections == 1
    await node.stop()


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n",
    # a 304 may state the size of the representation it stands for; no body follows it
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
])
async def test_bodiless_answers_end_at_their_head_and_leave_the_connection_reusable(
        client, head):
    node = Node(head, answer(b"after"), step=3)
    url = await node.start()
    response = await client.post(url, "/api/chat", b"{}", {})
    assert response.status in (204, 304)
    assert "link" not in response.headers  # an interim answer's headers are not the answer's
    assert await response.read() == b""
    response.release()
    assert await fetch(client, url) == (200, b"after", True)
    assert node.connections == 1
    await node.stop()


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n\r\n",  # no length, not chunked
    b"HTTP/1.0 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n",  # not chunked: to the close
])
async def test_a_body_without_length_runs_to_the_close_and_is_not_reused(client, head):
    body = b'{"n":1}\n{"n":2}\n' * 50
    node = Node((head + body, "hang_up"), answer(b"second"), step=64)
    url = await node.start()
    assert await fetch(client, url) == (200, body, False)
    assert await fetch(client, url) == (200, b"second", True)
    assert node.connections == 2  # the first connection was never put back
    await node.stop()


# --- malformed answers fail the attempt, never crash or hang --------------------------------


@pytest.mark.parametrize("chunks", [
    b"zz\r\nhi\r\n0\r\n\r\n",
    b"-1\r\nhi\r\n0\r\n\r\n",
    b"0x2\r\nhi\r\n0\r\n\r\n",
    b"2\r\nhiX\r\n0\r\n\r\n",  # a chunk longer than it said
    b"FFFFFFFFFFFFFFFFFF\r\n",  # a size that overflows
])
async def test_a_bad_chunk_is_an_upstream_error_and_the_connection_is_dropped(client, chunks):
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    node = Node(head + chunks, answer(b"fine"), step=4)
    url = await node.start()
    response = None
    with pytest.raises(UpstreamError, match="bad response body") as caught:
        # the bad chunk may come in the same read as the head: then post itself fails
        response = await client.post(url, "/api/chat", b"{}", {})
        while await response.readany():
            pass
    assert isinstance(caught.value, OSError)
    if response is not None:
        response.release()
    assert await fetch(client, url) == (200, b"fine", True)
    assert node.connections == 2
    await node.stop()


@pytest.mark.parametrize("cut", [
    b"5\r\nab",  # inside a chunk
    b"2\r\nab\r\n",  # between chunks, before the last one
    b"2\r\nab\r\n0\r\nX-Trailer: t\r\n",  # inside the trailers
])
async def test_a_chunked_body_cut_short_is_an_upstream_error(client, cut):
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    node = Node((head + cut, "hang_up"))
    url = await node.start()
    response = await client.post(url, "/api/chat", b"{}", {})
    with pytest.raises(UpstreamError, match="closed the connection"):
        await response.read()
    response.release()
    await node.stop()


async def test_a_length_body_cut_short_is_an_upstream_error(client):
    node = Node((b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n" + b"x" * 20, "hang_up"))
    url = await node.start()
    response = await client.post(url, "/api/chat", b"{}", {})
    with pytest.raises(UpstreamError, match="closed the connection"):
        await response.read()
    response.release()
    await node.stop()


@pytest.mark.parametrize("head", [
    # one endless header line, written a kilobyte at a time: the server never ends it
    b"HTTP/1.1 200 OK\r\nX-Huge: " + b"a" * 100_000,
    # many short header lines, the head never ending
    b"HTTP/1.1 200 OK\r\n" + b"X-Many: b\r\n" * 10_000,
    # a whole head over the limit in one write, with its end
    b"HTTP/1.1 200 OK\r\n" + b"X-Many: b\r\n" * 7_000 + b"Content-Length: 0\r\n\r\n",
])
async def test_a_head_over_the_limit_is_an_upstream_error_not_a_hang(head):
    upstream = Upstream(connect_timeout=2, read_timeout=10)  # a hang would take 10 s, not fail
    node = Node(head, step=1024 if not head.endswith(b"\r\n\r\n") else None)
    url = await node.start()
    with pytest.raises(UpstreamError, match="head too large") as caught:
        await upstream.post(url, "/api/chat", b"{}", {})
    assert caught.value.sent is True
    await upstream.close()
    await node.stop()


async def test_endless_trailers_are_an_upstream_error_not_a_hang():
    upstream = Upstream(connect_timeout=2, read_timeout=10)
    node = Node(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n"
                + b"X-T: " + b"t" * 100_000, step=1024)
    url = await node.start()
    response = await upstream.post(url, "/api/chat", b"{}", {})
    with pytest.raises(UpstreamError, match="trailers too large"):
        await response.read()
    response.release()
    await upstream.close()
    await node.stop()


@pytest.mark.parametrize("garbage", [
    b"HTTP/1.1 abc OK\r\n\r\n",
    b"HTTP/9 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 2\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\nhi\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Header Name: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Nul: a\x00b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello: an https node called as http
])
async def test_a_garbled_head_is_an_upstream_error(garbage):
    upstream = Upstream(connect_timeout=2, read_timeout=10)
    node = Node(garbage, step=7)
    url = await node.start()
    with pytest.raises(UpstreamError) as caught:
        await upstream.post(url, "/api/chat", b"{}", {})
    assert caught.value.sent is True and isinstance(caught.value, OSError)
    await upstream.close()
    await node.stop()


# --- keep-alive --------------------------------------------------------------------------------


async def test_a_connection_is_reused_after_an_answer_read_to_its_end(client):
    node = Node(answer(b"one"), CHUNKED_WITH_EXTRAS, answer(b"three"), step=16)
    url = await node.start()
    assert await fetch(client, url) == (200, b"one", True)
    assert (await fetch(client, url))[1] == b'{"a":1}\n{"b":"xy"}'
    assert await fetch(client, url) == (200, b"three", True)
    assert node.connections == 1 and node.requests == 3
    await node.stop()


@pytest.mark.parametrize("first", [
    answer(b"one", "Connection: close"),
    answer(b"one", "Connection: keep-alive, close"),
    b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\none",  # 1.0 without keep-alive
])
async def test_no_reuse_after_the_node_said_close(client, first):
    node = Node(first, answer(b"two"))
    url = await node.start()
    assert await fetch(client, url) == (200, b"one", False)
    assert await fetch(client, url) == (200, b"two", True)
    assert node.connections == 2
    await node.stop()


async def test_no_reuse_of_a_connection_whose_answer_was_not_read(client):
    unfinished = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n"
    node = Node(unfinished, answer(b"two"))
    url = await node.start()
    response = await client.post(url, "/api/chat", b"{}", {})
    response.release()  # the rest of the body has not come
    assert await fetch(client, url) == (200, b"two", True)
    assert node.connections == 2
    await node.stop()


async def test_bytes_after_the_answer_keep_the_answer_but_retire_the_connection(client):
    node = Node(answer(b"one") + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra",
                answer(b"two"))
    url = await node.start()
    response = await client.post(url, "/api/chat", b"{}", {})
    assert await response.read() == b"one"
    await asyncio.sleep(0.05)  # the stray answer arrives while the response is held
    response.release()
    assert await fetch(client, url) == (200, b"two", True)
    assert node.connections == 2
    await node.stop()
