"""The lean upstream client against scripted raw HTTP servers on loopback: framing, keep-alive,
stale pooled connections, errors and timeouts."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

from herd_kernel.upstream import Upstream, UpstreamError


class Script:
    """A raw TCP server: each accepted connection answers each request with the next scripted
    reply (bytes, or a list of bytes pieces sent apart), then keeps the connection open."""

    def __init__(self, replies, *, close_after=None):
        self.replies = list(replies)
        self.requests: list[bytes] = []
        self.connections = 0
        self.close_after = close_after  # close each connection after this many answers
        self.server = None
        self.writers = []

    async def start(self, tls=None):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        scheme = "https" if tls else "http"
        return f"{scheme}://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader, writer):
        self.connections += 1
        self.writers.append(writer)
        answered = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                self.requests.append(head + await reader.readexactly(length))
                reply = self.replies.pop(0)
                for piece in reply if isinstance(reply, list) else [reply]:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.005)
                answered += 1
                if self.close_after and answered >= self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def stop(self):
        self.server.close()
        for writer in self.writers:  # the server's open connections are ours to close
            writer.close()
        await self.server.wait_closed()
        await asyncio.sleep(0.01)


@pytest.fixture
async def client():
    upstream = Upstream(connect_timeout=2, read_timeout=2)
    yield upstream
    await upstream.close()


def body_of(text: str) -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(text)}\r\n\r\n{text}".encode()


CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"6\r\n{\"a\":1\r\n3;ext=1\r\n}\n\n\r\n0\r\nX-Trailer: t\r\n\r\n")


async def test_content_length_answer_and_the_connection_is_reused(client):
    server = Script([body_of('{"done":true}'), body_of('{"again":1}')])
    url = await server.start()
    first = await client.post(url, "/api/chat", b'{"m":1}', {"Content-Type": "application/json"})
    assert first.status == 200 and first.headers["content-type"] == "application/json"
    assert await first.read() == b'{"done":true}'
    first.release()
    second = await client.post(url, "/api/chat", b"{}", {})
    assert await second.read() == b'{"again":1}'
    second.release()
    assert server.connections == 1
    assert server.requests[0].startswith(b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"Content-Length: 7\r\n" in server.requests[0] and server.requests[0].endswith(b'{"m":1}')
    await server.stop()


@pytest.mark.parametrize("split", [1, 3, 7, 1000])
async def test_chunked_body_decoded_whatever_the_packet_boundaries(client, split):
    pieces = [CHUNKED[i:i + split] for i in range(0, len(CHUNKED), split)]
    server = Script([pieces, body_of("next")])
    url = await server.start()
    response = await client.post(url, "/api/chat", b"{}", {})
    assert await response.read() == b'{"a":1}\n\n'
    response.release()
    again = await client.post(url, "/api/chat", b"{}", {})  # trailers consumed: reusable
    assert await again.read() == b"next"
    again.release()
    assert server.connections == 1
    await server.stop()


async def test_readany_hands_over_bytes_as_they_arrive(client):
    server = Script([[CHUNKED[:80], CHUNKED[80:]]])
    url = await server.start()
    response = await client.post(url, "/api/chat", b"{}", {})
    parts = []
    while chunk := await response.readany():
        parts.append(chunk)
    assert b"".join(parts) == b'{"a":1}\n\n' and len(parts) >= 1
    response.release()
    await server.stop()


async def test_a_body_that_ends_with_the_connection(client):
    server = Script([b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it"], close_after=1)
    url = await server.start()
    response = await client.post(url, "/", b"", {})
    assert await response.read() == b"all of it" and not response.keep_alive
    response.release()
    await server.stop()


async def test_interim_100_continue_is_skipped(client):
    server = Script([b"HTTP/1.1 100 Continue\r\n\r\n" + body_of("ok")])
    url = await server.start()
    response = await client.post(url, "/", b"", {})
    assert response.status == 200 and await response.read() == b"ok"
    response.release()
    await server.stop()


async def test_a_pooled_connection_the_node_closed_is_replaced_silently(client):
    server = Script([body_of("one"), body_of("two")], close_after=1)
    url = await server.start()
    first = await client.post(url, "/", b"", {})
    assert await first.read() == b"one"
    first.release()  # pooled; the server closes it right after
    await asyncio.sleep(0.05)
    second = await client.post(url, "/", b"", {})
    assert await second.read() == b"two"
    second.release()
    assert server.connections == 2
    await server.stop()


async def test_refused_connection_is_an_upstream_error(client):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UpstreamError, match="connect"):
        await client.post(f"http://127.0.0.1:{port}", "/", b"", {})


async def test_garbage_and_early_close_are_upstream_errors(client):
    server = Script([b"SSH-2.0-OpenSSH\r\n\r\n"])
    url = await server.start()
    with pytest.raises(UpstreamError, match="not an HTTP response"):
        await client.post(url, "/", b"", {})
    await server.stop()
    cut = Script([[b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"]], close_after=1)
    url = await cut.start()
    response = await client.post(url, "/", b"", {})
    assert await response.readany() == b"only this"
    with pytest.raises(UpstreamError, match="closed"):
        await response.readany()
    response.release()
    await cut.stop()


async def test_silence_past_the_read_timeout_is_a_timeout():
    upstream = Upstream(connect_timeout=1, read_timeout=0.1)
    server = Script([[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n"]])
    url = await server.start()
    response = await upstream.post(url, "/", b"", {})
    assert await response.readany() == b"hi"
    with pytest.raises(TimeoutError):
        await response.readany()
    response.release()
    await upstream.close()
    await server.stop()


async def test_an_https_node_with_its_certificate_checked():
    data = Path(__file__).parent / "data"
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(data / "loopback-cert.pem", data / "loopback-key.pem")
    server = Script([body_of("secure")])
    url = await server.start(server_tls)
    trusting = ssl.create_default_context(cafile=str(data / "loopback-cert.pem"))
    upstream = Upstream(connect_timeout=2, read_timeout=2, tls=trusting)
    response = await upstream.post(url, "/api/chat", b"{}", {})
    assert await response.read() == b"secure"
    response.release()
    await upstream.close()
    stranger = Upstream(connect_timeout=2, read_timeout=2)  # the system's trust store: refused
    with pytest.raises(UpstreamError, match="connect"):
        await stranger.post(url, "/api/chat", b"{}", {})
    await stranger.close()
    await server.stop()


# --- never twice, bounded memory, bad URLs ---------------------------------------------------------


async def test_a_reused_connection_dropped_after_the_request_is_never_resent(client):
    server = Script([body_of("one"), b""], close_after=2)  # reads the second request, then hangs up
    url = await server.start()
    first = await client.post(url, "/", b"", {})
    assert await first.read() == b"one"
    first.release()
    with pytest.raises(UpstreamError) as caught:
        await client.post(url, "/api/chat", b"{}", {})
    assert caught.value.sent is True  # the caller knows the node may be running it
    assert len(server.requests) == 2 and server.connections == 1  # sent once, not again
    await server.stop()


async def test_a_fast_node_is_paused_while_the_reader_is_slow(client):
    total = 24 * 1024 * 1024
    written = 0

    async def flood(reader, writer):
        nonlocal written
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                     b"Connection: close\r\n\r\n")
        line = b"x" * 1023 + b"\n"
        try:
            while written < total:
                writer.write(line * 64)
                written += len(line) * 64
                await writer.drain()  # blocks while the router does not read
        except ConnectionError:
            pass
        writer.close()

    server = await asyncio.start_server(flood, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    response = await client.post(f"http://127.0.0.1:{port}", "/", b"", {})
    await asyncio.sleep(0.5)  # the node writes as fast as it can; nobody reads
    held = response._buffered
    assert held <= 512 * 1024  # the high-water mark plus what one read brings
    assert written < total // 2  # TCP made the node wait
    received = 0
    while chunk := await response.readany():
        received += len(chunk)
    assert received == total  # nothing lost by pausing
    response.release()
    server.close()
    await server.wait_closed()


async def test_a_whole_answer_over_the_limit(client):
    server = Script([body_of("x" * 5000), CHUNKED.replace(b'{"a":1', b'{"a":2')])
    url = await server.start()
    from herd_kernel.upstream import AnswerTooLarge

    response = await client.post(url, "/", b"", {})
    with pytest.raises(AnswerTooLarge, match="5000 bytes"):
        await response.read(limit=4096)
    response.release()
    response = await client.post(url, "/", b"", {})
    with pytest.raises(AnswerTooLarge):
        await response.read(limit=5)  # chunked: counted as it arrives
    response.release()
    await server.stop()


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999", "http://[::1", "ftp://127.0.0.1:21"])
async def test_bad_node_urls_are_upstream_errors(client, url):
    with pytest.raises(UpstreamError):
        await client.post(url, "/api/chat", b"{}", {})
