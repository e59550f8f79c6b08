"""A lean HTTP/1.1 client for the one request per routed request: POST to a node, relay the answer.

aiohttp's client spends about 0.2 ms of CPU on each request before a byte moves (a request
object, payload wrappers, trace hooks, timers re-armed per chunk); this one writes the request in
one call and hands the answer's bytes, as they arrive, to httptools' response parser (llhttp, the
parser uvloop and uvicorn use) for the framing: status line, headers, interim 1xx answers,
``Content-Length``, chunked (extensions, trailers) or read-to-close bodies. What llhttp rejects
fails the attempt as ``UpstreamError``. Everything else the router sends to nodes (pre-warm,
pulls) still goes through aiohttp.

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

import httptools

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
        # llhttp calls the on_* methods below as it frames the bytes; the parser and this object
        # point at each other, so ``release`` and ``_lost`` drop the parser to break the cycle
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._head_size = 0  # the head's header lines so far (interim heads too)
        self._unframed = 0  # bytes fed since the parser last produced body bytes
        self._body: collections.deque[bytes] = collections.deque()  # decoded body, not yet read
        self._head_done = False
        self._length: int | None = None  # the declared Content-Length
        self._until_close = False  # no length, not chunked: the body ends with the connection
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
        parser = self._parser
        if parser is None:
            return
        buffered = self._buffered
        try:
            parser.feed_data(data)
        except Exception as exc:  # llhttp's errors, an upgrade, or one raised by a callback below
            if self._complete:
                # bytes after the answer (or after "Connection: close"): the answer stands, the
                # connection is unusable
                self.keep_alive = False
            else:
                self._error = self._failure(exc)
                self._conn.close()
        else:
            # llhttp stores a header or trailer line whole before handing it over and sets no
            # limit: bytes that bring no body (a head, trailers) are capped here
            if self._buffered != buffered or self._complete:
                self._unframed = 0
            else:
                self._unframed += len(data)
                if self._unframed > _MAX_HEAD:
                    part = "trailers" if self._head_done else "head"
                    self._error = UpstreamError(f"response {part} too large")
                    self._conn.close()
        if self._buffered > _HIGH_WATER and not self._paused:
            transport = self._conn.transport
            if transport is not None and not transport.is_closing():
                transport.pause_reading()
                self._paused = True
        self._wake()

    def _failure(self, exc: Exception) -> UpstreamError:
        cause = exc.__context__
        if isinstance(cause, UpstreamError):
            return cause
        reason = str(exc) or type(exc).__name__
        if not self._head_done:
            return UpstreamError(f"not an HTTP response: {reason}")
        return UpstreamError(f"bad response body: {reason}")

    def on_message_begin(self) -> None:
        if self._complete:  # a second answer nobody asked for: stop parsing (see _feed)
            raise UpstreamError("bytes after the answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:
            return  # a chunked body's trailers: nothing the router reads
        self._head_size += len(name) + len(value) + 4
        if self._head_size > _MAX_HEAD:  # a whole head in one read, past the cap above
            raise UpstreamError("response head too large")
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1").strip()

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        if status == 101:  # we never ask for an upgrade
            raise UpstreamError("node switched protocols (HTTP 101)")
        if 100 <= status < 200:  # an interim answer: the real head follows
            self.headers = {}
            return
        self.status = status
        self._head_done = True
        self.keep_alive = parser.should_keep_alive()
        headers = self.headers
        if "content-length" in headers:
            self._length = int(headers["content-length"])  # llhttp checked it is digits
        else:
            coding = headers.get("transfer-encoding", "").rsplit(",", 1)[-1]
            self._until_close = coding.strip().lower() != "chunked" and status not in (204, 304)

    def on_body(self, data: bytes) -> None:
        self._body.append(data)
        self._buffered += len(data)

    def on_message_complete(self) -> None:
        if self._head_done:  # not the end of an interim answer
            self._complete = True

    def _resume(self) -> None:
        self._paused = False
        transport = self._conn.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _lost(self, exc: Exception | None) -> None:
        self._parser = None
        if self._head_done and self._until_close and not self._complete:
            self._complete = True  # the body ran to the end of the connection
        elif not self._complete and self._error is None:
            reason = f": {exc}" if exc else ""
            self._error = UpstreamError(f"node closed the connection{reason}")
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

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
        declared = self._length
        if limit is not None and declared is not None and declared > limit:
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
        self._parser = None
        if self._complete and self.keep_alive and not conn.closed:
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
