"""A lean HTTP/1.1 client for the one request per routed request: POST to a node, relay the answer.

aiohttp's client spends about 0.2 ms of CPU on each request before a byte moves (a request
object, payload wrappers, trace hooks, timers re-armed per chunk); this one writes the request in
one call and decodes ``Content-Length`` or chunked bodies as bytes arrive. Everything else the
router sends to nodes (pre-warm, pulls) still goes through aiohttp.

Connections are kept alive and pooled per node address; one the node closed while it sat idle
leaves the pool at once, and a request that meets a closed reused connection before any byte of
the answer is sent again once on a new connection (the node never saw it).
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


class UpstreamError(ConnectionError):
    """The node refused, closed or garbled the connection."""


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
        self._got_bytes = False
        self.keep_alive = True
        self.status = 0
        self.headers: dict[str, str] = {}

    # --- fed by the protocol -----------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._got_bytes = True
        self._buffer += data
        try:
            if not self._head_done:
                self._parse_head()
            if self._head_done and not self._complete:
                self._parse_body()
        except UpstreamError as exc:
            self._error = exc
            self._conn.close()
        self._wake()

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
                self._body.append(bytes(buffer[:take]))
                del buffer[:take]
                self._remaining -= take
            if self._remaining == 0:
                self._complete = True
            return
        if self._framing == "close":
            if buffer:
                self._body.append(bytes(buffer))
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
                self._body.append(bytes(buffer[:take]))
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
            return self._body.popleft()
        data = b"".join(self._body)
        self._body.clear()
        return data

    async def read(self) -> bytes:
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Give the connection back to the pool if the answer was read whole, else close it."""
        conn = self._conn
        if conn.response is not self:
            return
        conn.response = None
        if self._complete and self.keep_alive and not self._buffer and not conn.closed:
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
        parts = urlsplit(base)
        host = parts.hostname or "localhost"
        secure = parts.scheme == "https"
        port = parts.port or (443 if secure else 80)
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
        conn = self._reuse(key)
        if conn is not None:
            response = Response(conn, self.read_timeout)
            try:
                return await self._send(conn, response, request)
            except UpstreamError:
                if response._got_bytes:
                    raise
                # a pooled connection the node had closed: once more, on a new one
        conn = await self._connect(key)
        return await self._send(conn, Response(conn, self.read_timeout), request)

    async def _send(self, conn: _Connection, response: Response, request: bytes) -> Response:
        conn.response = response
        assert conn.transport is not None
        conn.transport.write(request)
        try:
            await response._head()
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
            if not conn.closed and now - conn.idle_since < _IDLE_S:
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
