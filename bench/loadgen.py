"""A closed-loop HTTP/1.1 load generator on raw asyncio: ``concurrency`` workers, each holding one
keep-alive connection and sending the same request back to back, reading every answer whole
(``Content-Length``, or chunks up to the terminating zero-size chunk). A library for
``bench/load.py``; it has no command line.

    stats = await run_load("http://127.0.0.1:11435/api/chat", body, concurrency=32, duration_s=10)

Per request it does one write, a few ``find`` calls on the bytes received and one clock read, so
that on a shared 2-core machine the generator is never the bottleneck it measures.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from functools import partial
from typing import Any
from urllib.parse import urlsplit


class Stats:
    """What every worker of one run adds to."""

    __slots__ = ("latencies", "ttfbs", "errors", "remaining", "deadline")

    def __init__(self, deadline: float, remaining: int | None) -> None:
        self.latencies: list[float] = []  # seconds, successful answers only
        self.ttfbs: list[float] = []  # seconds to the first byte of each successful answer
        self.errors: Counter[str] = Counter()  # error kind -> count
        self.remaining = remaining  # requests left to send in all; None: until the deadline
        self.deadline = deadline

    def take(self) -> bool:
        """May one more request be sent?"""
        if time.perf_counter() >= self.deadline:
            return False
        if self.remaining is None:
            return True
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True


class _Connection(asyncio.Protocol):
    """One keep-alive connection sending requests back to back until ``stats`` says stop."""

    def __init__(self, request: bytes, stats: Stats, finished: asyncio.Future[None]) -> None:
        self.request, self.stats, self.finished = request, stats, finished
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.sent = 0.0
        self.first = 0.0
        self.body_at = -1  # index of the body in buffer once the head is complete
        self.length = -1  # Content-Length, or -1 for a chunked answer
        self.chunk_at = 0  # next chunk-size line of a chunked answer
        self.status = 0
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if not self.stats.take():
            self.closing = True
            self.transport.close()
            return
        self.buffer.clear()
        self.body_at, self.length, self.first = -1, -1, 0.0
        self.sent = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.first:
            self.first = time.perf_counter()
        buffer = self.buffer
        buffer += data
        if self.body_at < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).lower()
            self.status = int(head[9:12])
            self.body_at = self.chunk_at = end + 4
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 17)
                self.length = int(head[at + 17:stop if stop >= 0 else end])
            elif b"chunked" not in head:
                self._fail("answer without a length")
                return
        if self.length >= 0:
            if len(buffer) < self.body_at + self.length:
                return
        elif not self._chunks_complete():
            return
        now = time.perf_counter()
        stats = self.stats
        if self.status < 400:
            stats.latencies.append(now - self.sent)
            stats.ttfbs.append(self.first - self.sent)
        else:
            stats.errors[f"HTTP {self.status}"] += 1
        self._send()

    def _chunks_complete(self) -> bool:
        buffer, at = self.buffer, self.chunk_at
        while (eol := buffer.find(b"\r\n", at)) >= 0:
            size = int(buffer[at:eol].split(b";", 1)[0], 16)
            if size == 0:  # the last chunk, then optional trailers and an empty line
                return buffer.find(b"\r\n\r\n", eol) >= 0
            following = eol + 2 + size + 2
            if len(buffer) < following:
                break
            at = following
        self.chunk_at = at
        return False

    def _fail(self, kind: str) -> None:
        self.stats.errors[kind] += 1
        self.closing = True
        assert self.transport is not None
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.stats.errors["connection lost"] += 1
        if not self.finished.done():
            self.finished.set_result(None)


async def _worker(host: str, port: int, request: bytes, stats: Stats) -> None:
    """Keep one connection busy; open a new one if the server drops it before the end."""
    loop = asyncio.get_running_loop()
    while time.perf_counter() < stats.deadline and (stats.remaining is None or stats.remaining > 0):
        finished: asyncio.Future[None] = loop.create_future()
        try:
            await loop.create_connection(partial(_Connection, request, stats, finished), host, port)
        except OSError as exc:
            stats.errors[f"connect: {type(exc).__name__}"] += 1
            await asyncio.sleep(0.05)
            continue
        await finished


def _ms(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


async def run_load(
    url: str,
    body: bytes,
    concurrency: int = 32,
    duration_s: float = 10.0,
    stream: bool = False,
    requests: int | None = None,
) -> dict[str, Any]:
    """POST ``body`` to ``url`` from ``concurrency`` keep-alive connections for ``duration_s``
    seconds, or until ``requests`` have been sent in all, whichever comes first.

    Returns ``requests`` (successful answers), ``errors``, ``error_kinds``, ``rps``, ``p50_ms``,
    ``p99_ms`` and, for a ``stream``, ``ttfb_p50_ms``: time to the first byte of the answer."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    started = time.perf_counter()
    stats = Stats(started + duration_s, requests)
    await asyncio.gather(*(_worker(host, port, request, stats) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ordered = sorted(stats.latencies)
    result: dict[str, Any] = {
        "requests": len(ordered),
        "errors": sum(stats.errors.values()),
        "error_kinds": dict(stats.errors),
        "rps": len(ordered) / elapsed,
        "p50_ms": _ms(ordered, 0.50),
        "p99_ms": _ms(ordered, 0.99),
    }
    if stream:
        result["ttfb_p50_ms"] = _ms(sorted(stats.ttfbs), 0.50)
    return result
