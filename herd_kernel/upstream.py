"""A lean HTTP/1.1 client for the one request per routed request: POST to a node, relay the answer.

aiohttp's client spends about 0.2 ms of CPU on each request before a byte moves (a request
object, payload wrappers, trace hooks, timers re-armed per chunk); this one writes the request in
one call and decodes ``Content-Length`` or chunked bodies as bytes arrive. Everything else the
router sends to nodes (pre-warm, pulls) still goes through aiohttp.

Connections are kept alive and pooled per node address; one the node closed while it sat idle
leaves the pool at once. A request is never sent twice: when a reused connection drops after the
request was written, the node may have started on it, so the caller hears ``UpstreamError`` with
``sent=True`` and decides (the pipeline counts it as an attempt and moves to another node).

Reading is flow-controlled: once ``_HIGH_WATER`` bytes of the answer wait unread (a client that
reads slowly), the socket to the node stops being read until the buffer drains below
``_LOW_WATER``, so a fast node cannot grow the router's memory; TCP tells the node to wait.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

_IDLE_S = 60.0  # an idle pooled connection older than this is closed, not reused
_MAX_HEAD = 64 * 1024
_HIGH_WATER = 256 * 1024  # unread answer bytes held before the node's socket is paused
_LOW_WATER = 64 * 1024


class UpstreamError(ConnectionError):
    """The node refused, closed or garbled the connection. ``sent``: the request had been written
    (the node may be running it), so sending it again could run it twice."""

    def __init__(self, message: str, *, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent


class AnswerTooLarge(Exception):
    """A whole answer larger than the caller's limit."""


class _Connection(asyncio.Protocol):
    def __init__(self, pool: Upstream, key: tuple[str, int, bool]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.idle_since = 0.0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.response is not None:
            self.response._feed(data)
        elif self.transport is not None:  # bytes nobody asked for: the connection is unusable
            self.transport.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._discard(self)
        if self.response is not None:
            self.response._lost(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Response:
    """The answer: ``status`` and ``headers`` (lower-case names) once ``post`` returns; the body
    with ``read()`` (whole) or ``readany()`` (what has arrived, ``b""`` at the end)."""

    def __init__(self, conn: _Connection, read_timeout: float) -> None:
        self._conn = conn
        self._timeout = read_timeout
        self._buffer = bytearray()  # raw bytes not parsed yet
        self._body: collections.deque[bytes] = collections.deque()  # decoded body, not yet read
        self._head_done = False
        self._framing = ""  # "length", "chunked" or "close"
        self._remaining = 0  # bytes left of the body (length) or of the current chunk (chunked)
        self._chunk_state = "size"  # chunked: "size", "data", "crlf", "trailers"
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._buffered = 0  # decoded body bytes not read yet
        self._paused = False
        self.keep_alive = True
        self.status = 0
        self.headers: dict[str, str] = {}

    # --- fed by the protocol -----------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._buffer += data
        try:
            if not self._head_done:
                self._parse_head()
            if self._head_done and not self._complete:
                self._parse_body()
        except UpstreamError as exc:
            self._error = exc
            self._conn.close()
        if self._buffered > _HIGH_WATER and not self._paused:
            transport = self._conn.transport
            if transport is not None and not transport.is_closing():
                transport.pause_reading()
                self._paused = True
        self._wake()

    def _resume(self) -> None:
        self._paused = False
        transport = self._conn.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _take(self, data: bytes | bytearray) -> None:
        self._body.append(bytes(data))
        self._buffered += len(data)

    def _lost(self, exc: Exception | None) -> None:
        if self._head_done and self._framing == "close" and not self._complete:
            self._complete = True  # the body ran to the end of the connection
        elif not self._complete and self._error is None:
            reason = f": {exc}" if exc else ""
            self._error = UpstreamError(f"node closed the connection{reason}")
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _parse_head(self) -> None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_HEAD:
                raise UpstreamError("response head too large")
            return
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise UpstreamError(f"not an HTTP response: {lines[0][:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:  # an interim answer: the real head follows
            self._parse_head()
            return
        self.status = status
        self.headers = headers
        self._head_done = True
        connection = headers.get("connection", "").lower()
        self.keep_alive = parts[0] == "HTTP/1.1" and "close" not in connection
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._framing = "chunked"
        elif "content-length" in headers:
            try:
                self._remaining = int(headers["content-length"])
            except ValueError:
                raise UpstreamError("bad Content-Length") from None
            self._framing = "length"
            if self._remaining == 0:
                self._complete = True
        elif status in (204, 304):
            self._framing = "length"
            self._complete = True
        else:
            self._framing = "close"
            self.keep_alive = False

    def _parse_body(self) -> None:
        buffer = self._buffer
        if self._framing == "length":
            take = min(len(buffer), self._remaining)
            if take:
                self._take(buffer[:take])
                del buffer[:take]
                self._remaining -= take
            if self._remaining == 0:
                self._complete = True
            return
        if self._framing == "close":
            if buffer:
                self._take(buffer)
                buffer.clear()
            return
        while buffer:  # chunked
            if self._chunk_state == "size":
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > 1024:
                        raise UpstreamError("bad chunk size line")
                    return
                size_text = bytes(buffer[:end]).split(b";", 1)[0].strip()
                del buffer[: end + 2]
                try:
                    self._remaining = int(size_text, 16)
                except ValueError:
                    raise UpstreamError("bad chunk size") from None
                self._chunk_state = "data" if self._remaining else "trailers"
            elif self._chunk_state == "data":
                take = min(len(buffer), self._remaining)
                self._take(buffer[:take])
                del buffer[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self._chunk_state = "crlf"
            elif self._chunk_state == "crlf":
                if len(buffer) < 2:
                    return
                if buffer[:2] != b"\r\n":
                    raise UpstreamError("chunk not followed by CRLF")
                del buffer[:2]
                self._chunk_state = "size"
            else:  # trailers: lines until an empty one
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                del buffer[: end + 2]
                if end == 0:
                    self._complete = True
                    return

    # --- read by the pipeline ----------------------------------------------------------------

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self._timeout):
                await self._waiter
        except TimeoutError:
            self._conn.close()
            raise TimeoutError(f"node sent nothing for {self._timeout:g} s") from None
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    async def _head(self) -> None:
        while not self._head_done:
            await self._wait()

    async def readany(self) -> bytes:
        """Body bytes that have arrived (waiting for some if none have); ``b""`` at the end."""
        while not self._body:
            if self._complete:
                return b""
            await self._wait()
        if len(self._body) == 1:
            data = self._body.popleft()
        else:
            data = b"".join(self._body)
            self._body.clear()
        self._buffered -= len(data)
        if self._paused and self._buffered <= _LOW_WATER:
            self._resume()
        return data

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; ``AnswerTooLarge`` (and the connection closed) past ``limit`` bytes."""
        if limit is not None and self._framing == "length":
            declared = int(self.headers.get("content-length") or 0)
            if declared > limit:
                self._conn.close()
                raise AnswerTooLarge(f"the answer is {declared} bytes (limit {limit})")
        parts = []
        size = 0
        while chunk := await self.readany():
            size += len(chunk)
            if limit is not None and size > limit:
                self._conn.close()
                raise AnswerTooLarge(f"the answer is over {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Give the connection back to the pool if the answer was read whole, else close it."""
        conn = self._conn
        if conn.response is not self:
            return
        conn.response = None
        if self._complete and self.keep_alive and not self._buffer and not conn.closed:
            if self._paused:
                self._resume()
            conn.pool._put(conn)
        else:
            conn.close()

    close = release


class Upstream:
    """Pooled keep-alive connections to nodes."""

    def __init__(self, *, connect_timeout: float, read_timeout: float,
                 tls: ssl.SSLContext | None = None) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._tls = tls  # for https nodes; the system's trust store when None
        self._idle: dict[tuple[str, int, bool], list[_Connection]] = {}

    async def post(self, base: str, path: str, body: bytes,
                   headers: Mapping[str, str]) -> Response:
        """Send ``POST base+path`` and return once the answer's head has arrived."""
        try:
            parts = urlsplit(base)
            host = parts.hostname or "localhost"
            secure = parts.scheme == "https"
            port = parts.port or (443 if secure else 80)
        except ValueError as exc:  # a port out of range, a broken IPv6 literal
            raise UpstreamError(f"bad node URL {base[:80]!r}: {exc}") from None
        if parts.scheme not in ("http", "https"):
            raise UpstreamError(f"unsupported scheme {parts.scheme!r}")
        prefix = parts.path.rstrip("/")
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"POST {prefix}{path} HTTP/1.1", f"Host: {netloc}",
                 f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()
                  if name.lower() not in ("host", "content-length")]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        key = (host, port, secure)
        conn = self._reuse(key) or await self._connect(key)
        return await self._send(conn, Response(conn, self.read_timeout), request)

    async def _send(self, conn: _Connection, response: Response, request: bytes) -> Response:
        conn.response = response
        assert conn.transport is not None
        conn.transport.write(request)
        try:
            await response._head()
        except UpstreamError as exc:
            response.release()
            raise UpstreamError(f"{exc} (after the request was sent)", sent=True) from None
        except BaseException:
            response.release()
            raise
        return response

    async def _connect(self, key: tuple[str, int, bool]) -> _Connection:
        loop = asyncio.get_running_loop()
        host, port, secure = key
        tls = None
        if secure:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            async with asyncio.timeout(self.connect_timeout):
                _transport, conn = await loop.create_connection(
                    lambda: _Connection(self, key), host, port, ssl=tls)
        except TimeoutError:
            raise TimeoutError(f"no connection within {self.connect_timeout:g} s") from None
        except OSError as exc:  # ssl.SSLError is one too
            raise UpstreamError(f"connect: {exc.strerror or exc}") from None
        return conn

    def _reuse(self, key: tuple[str, int, bool]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if not conn.closed and now - conn.idle_since < _IDLE_S and transport is not None \
                    and not transport.is_closing():
                return conn
            conn.close()
        return None

    def _put(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.key, []).append(conn)

    def _discard(self, conn: _Connection) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    async def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports close
