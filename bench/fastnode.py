"""A minimal fake Ollama node for throughput benchmarks, on raw asyncio with precomputed answers.

HTTP/1.1 with keep-alive and every answer computed once, so that the router in front of it, not
the fake, is what gets measured.

    uv run --all-packages python bench/fastnode.py [--port 11434] [--model llama3.2:3b]

Listens on 127.0.0.1 only and prints its URL on the first line of stdout (``--port 0`` picks a free
port). Answers instantly:

- ``POST /api/chat``, ``POST /api/generate``: 8 content chunks and a final ``done`` chunk with
  Ollama's counters (NDJSON, chunked) when streaming (Ollama's default), else one JSON object;
- ``POST /v1/chat/completions``: SSE ``data:`` frames and ``data: [DONE]`` when ``stream`` is true
  (a usage frame too if ``stream_options.include_usage``), else one JSON object;
- ``GET /api/ps`` (the model loaded, context 8192), ``GET /api/tags``, ``GET /api/version``,
  ``GET /`` ("Ollama is running"); 404 with a JSON error otherwise.

The request body is never parsed: only ``Content-Length`` is read, and the body is searched for
``"stream"`` (and ``"include_usage"``). Uses uvloop when it is importable. Also a library:
``url, close = await start_fastnode()``.

``--flood MODE`` (``start_fastnode(flood=MODE)``) makes ``POST /api/chat`` and ``/api/generate``
answer with as many bytes as the socket takes, for ``--flood-seconds`` (then the answer ends, or the
connection closes) or until the client goes: ``lines`` streams NDJSON lines of about 1 KB,
``no-newline`` one endless line, ``huge-whole`` one JSON object announced with a ``Content-Length``
of 2 GB. It writes only while the transport is not paused, so the reader sets the pace
(``bench/slow_reader.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

try:
    import uvloop
except ImportError:  # the default loop is fast enough to serve a router on another core
    uvloop = None

MODEL = "llama3.2:3b"
TOKENS = ("The", " sky", " is", " blue", " because", " of", " Rayleigh", " scattering.")
CREATED_AT = "2025-01-01T00:00:00.000000000Z"
CREATED = 1735689600
DIGEST = "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72"
SIZE = 2_019_393_189
PROMPT_TOKENS = 26
COUNTERS = {  # what Ollama adds to the final chunk, in nanoseconds and tokens
    "total_duration": 181_000_000, "load_duration": 12_000_000,
    "prompt_eval_count": PROMPT_TOKENS, "prompt_eval_duration": 21_000_000,
    "eval_count": len(TOKENS), "eval_duration": 148_000_000,
}
DETAILS = {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
           "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}
KEPT_FOREVER = "2318-04-11T23:47:16.854775807Z"  # Ollama's expires_at under keep_alive -1
JSON = b"application/json; charset=utf-8"

Answers = dict[tuple[bytes, bytes], bytes]
# POST paths whose answer depends on the body: path -> (streamed, whole, streamed with usage)
Variants = dict[bytes, tuple[bytes, bytes, bytes]]


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _whole(body: bytes, status: str = "200 OK", kind: bytes = JSON) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: ".encode() + kind
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _chunked(frames: list[bytes], kind: bytes) -> bytes:
    """One chunk per frame, as Ollama flushes each line, all written at once."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + b"".join(b"%x\r\n%s\r\n" % (len(f), f) for f in frames) + b"0\r\n\r\n"


def _ollama(model: str, field: str, final_extra: dict[str, Any]) -> tuple[bytes, bytes]:
    """Streamed and whole answers of /api/chat (``field`` "message") or /api/generate
    ("response")."""

    def part(text: str) -> Any:
        return {"role": "assistant", "content": text} if field == "message" else text

    base = {"model": model, "created_at": CREATED_AT}
    done = {"done": True, "done_reason": "stop", **final_extra, **COUNTERS}
    frames = [_json({**base, field: part(t), "done": False}) + b"\n" for t in TOKENS]
    frames.append(_json({**base, field: part(""), **done}) + b"\n")
    whole = _json({**base, field: part("".join(TOKENS)), **done})
    return _chunked(frames, b"application/x-ndjson"), _whole(whole)


def _openai(model: str) -> tuple[bytes, bytes, bytes]:
    """Streamed, whole and streamed-with-usage answers of /v1/chat/completions."""
    usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": len(TOKENS),
             "total_tokens": PROMPT_TOKENS + len(TOKENS)}

    def base(kind: str) -> dict[str, Any]:
        return {"id": "chatcmpl-417", "object": kind, "created": CREATED, "model": model,
                "system_fingerprint": "fp_ollama"}

    def event(choices: list[Any], **extra: Any) -> bytes:
        chunk = {**base("chat.completion.chunk"), "choices": choices, **extra}
        return b"data: " + _json(chunk) + b"\n\n"

    frames = [event([{"index": 0, "delta": {"role": "assistant", "content": t},
                      "finish_reason": None}]) for t in TOKENS]
    frames.append(event([{"index": 0, "delta": {"role": "assistant", "content": ""},
                          "finish_reason": "stop"}]))
    done = b"data: [DONE]\n\n"
    whole = _json({**base("chat.completion"), "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "".join(TOKENS)},
         "finish_reason": "stop"}], "usage": usage})
    return (_chunked([*frames, done], b"text/event-stream"), _whole(whole),
            _chunked([*frames, event([], usage=usage), done], b"text/event-stream"))


def build_answers(model: str = MODEL) -> tuple[Answers, Variants]:
    """Every answer as the bytes to write, computed once."""
    tags = {"name": model, "model": model, "modified_at": "2025-01-01T00:00:00Z", "size": SIZE,
            "digest": DIGEST, "details": DETAILS}
    ps = {"name": model, "model": model, "size": SIZE, "digest": DIGEST, "details": DETAILS,
          "expires_at": KEPT_FOREVER, "size_vram": SIZE, "context_length": 8192}
    answers = {
        (b"GET", b"/"): _whole(b"Ollama is running", kind=b"text/plain; charset=utf-8"),
        (b"GET", b"/api/version"): _whole(b'{"version":"0.12.0"}'),
        (b"GET", b"/api/tags"): _whole(_json({"models": [tags]})),
        (b"GET", b"/api/ps"): _whole(_json({"models": [ps]})),
    }
    chat = _ollama(model, "message", {})
    generate = _ollama(model, "response", {"context": [1, 2, 3]})
    variants = {
        b"/api/chat": (*chat, chat[0]),
        b"/api/generate": (*generate, generate[0]),
        b"/v1/chat/completions": _openai(model),
    }
    return answers, variants


NOT_FOUND = _whole(b'{"error":"not found"}', "404 Not Found")
LENGTH_REQUIRED = _whole(b'{"error":"a Content-Length is required"}', "411 Length Required")


def _flag(body: bytes, name: bytes, default: bool) -> bool:
    """The JSON boolean after ``"name":`` in ``body``, found by search, not by parsing."""
    at = body.find(name)
    if at < 0:
        return default
    value = body[at + len(name):at + len(name) + 8].lstrip(b'": \t')[:1]
    return default if value not in (b"t", b"f") else value == b"t"


class FastNode(asyncio.Protocol):
    """One keep-alive connection: parse head + Content-Length, skip the body, write the answer."""

    def __init__(self, answers: Answers, variants: Variants, open_: set[asyncio.Transport]) -> None:
        self.answers, self.variants, self.open = answers, variants, open_
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        self.open.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open.discard(self.transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        transport = self.transport
        assert transport is not None
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            head = buffer[:end].lower()
            length = 0
            if (at := head.find(b"\r\ncontent-length:")) >= 0:
                stop = head.find(b"\r\n", at + 17)
                length = int(head[at + 17:stop if stop >= 0 else end])
            elif b"\r\ntransfer-encoding:" in head:  # no router sends a chunked request body
                transport.write(LENGTH_REQUIRED)
                transport.close()
                return
            total = end + 4 + length
            if len(buffer) < total:
                break
            method, target, _ = buffer[:end].split(b" ", 2)
            path = target.split(b"?", 1)[0]
            variants = self.variants.get(path) if method == b"POST" else None
            if variants is not None:
                body = buffer[end + 4:total]
                if not _flag(body, b'"stream"', path != b"/v1/chat/completions"):
                    answer = variants[1]
                elif _flag(body, b'"include_usage"', False):
                    answer = variants[2]
                else:
                    answer = variants[0]
            else:
                key = (b"GET" if method == b"HEAD" else method, path)
                answer = self.answers.get(key, NOT_FOUND)
                if method == b"HEAD":
                    answer = answer[:answer.index(b"\r\n\r\n") + 4]
            transport.write(answer)
            buffer = buffer[total:]
            if b"\r\nconnection: close" in head:
                transport.close()
                return
        self.buffer = buffer


# --- flood answers: bytes as fast as the reader takes them ---------------------------------------

FLOOD_MODES = ("lines", "no-newline", "huge-whole")
HUGE_WHOLE = 2_000_000_000  # the Content-Length a huge-whole answer announces
_FLOOD_BLOCK = 64 * 1024
_FLOOD_BURST = 16  # blocks written per loop turn, so one flood cannot starve the event loop
_FLOOD_PATHS = (b"/api/chat", b"/api/generate")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Flood:
    """One flood answer's bytes: a head, a block repeated, an end."""

    def __init__(self, mode: str, model: str) -> None:
        self.mode = mode
        base = {"model": model, "created_at": CREATED_AT}
        if mode == "huge-whole":
            opening = _json({**base, "message": {"role": "assistant", "content": ""}})
            opening = opening[:opening.rindex(b'""') + 1]  # ...,"content":"  (left open)
            closing = b'"},' + _json({"done": True, "done_reason": "stop", **COUNTERS})[1:]
            self.head = (b"HTTP/1.1 200 OK\r\nContent-Type: " + JSON + b"\r\nContent-Length: "
                         + str(HUGE_WHOLE).encode() + b"\r\n\r\n" + opening)
            self.block = b"x" * _FLOOD_BLOCK
            self.end = closing
            self.remaining = HUGE_WHOLE - len(opening) - len(closing)
            return
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
        self.head = head + b"Transfer-Encoding: chunked\r\n\r\n"
        self.remaining = -1  # until the time is up
        if mode == "lines":
            line = _json({**base, "message": {"role": "assistant", "content": "x" * 900},
                          "done": False}) + b"\n"
            self.block = _chunk(line * max(1, _FLOOD_BLOCK // len(line)))
            final = _json({**base, "message": {"role": "assistant", "content": ""},
                           "done": True, "done_reason": "stop", **COUNTERS}) + b"\n"
            self.end = _chunk(final) + b"0\r\n\r\n"
        else:  # no-newline: one line that never ends; the connection closes when time is up
            opening = _json({**base, "message": {"role": "assistant", "content": ""}})
            self.head += _chunk(opening[:opening.rindex(b'""') + 1])
            self.block = _chunk(b"x" * _FLOOD_BLOCK)
            self.end = b""


class FloodNode(FastNode):
    """FastNode whose chat and generate answers are floods; everything else as FastNode."""

    def __init__(self, answers: Answers, variants: Variants, open_: set[asyncio.Transport],
                 mode: str, seconds: float, model: str) -> None:
        super().__init__(answers, variants, open_)
        self.mode, self.seconds, self.model = mode, seconds, model
        self.pending = b""
        self.flood: _Flood | None = None
        self.deadline = 0.0
        self.paused = False
        self.scheduled = False

    def data_received(self, data: bytes) -> None:
        if self.flood is not None:
            return  # the client's bytes while we flood it: nothing to answer
        if self.buffer:  # FastNode holds part of a request it is reading
            super().data_received(data)
            return
        buffer = self.pending + data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            self.pending = buffer
            return
        method, target, _ = buffer[:end].split(b" ", 2)
        if method != b"POST" or target.split(b"?", 1)[0] not in _FLOOD_PATHS:
            self.pending = b""
            super().data_received(buffer)
            return
        head = buffer[:end].lower()
        at = head.find(b"\r\ncontent-length:")
        length = 0
        if at >= 0:
            stop = head.find(b"\r\n", at + 17)
            length = int(head[at + 17:stop if stop >= 0 else end])
        if len(buffer) < end + 4 + length:
            self.pending = buffer
            return
        self.pending = b""
        self.flood = _Flood(self.mode, self.model)
        self.deadline = time.monotonic() + self.seconds
        assert self.transport is not None
        self.transport.write(self.flood.head)
        self._pump()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    def _pump(self) -> None:
        self.scheduled = False
        flood, transport = self.flood, self.transport
        if flood is None or transport is None or transport.is_closing():
            return
        for _ in range(_FLOOD_BURST):
            if self.paused or transport.is_closing():
                return  # resume_writing calls again; a closed one is done
            if time.monotonic() >= self.deadline or flood.remaining == 0:
                if flood.remaining <= 0:  # a whole answer cut short cannot end properly
                    transport.write(flood.end)
                transport.close()
                return
            block = flood.block
            if flood.remaining > 0:
                block = block[:flood.remaining]
                flood.remaining -= len(block)
            transport.write(block)
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)


async def start_fastnode(
    port: int = 0, model: str = MODEL, *, flood: str | None = None, flood_seconds: float = 10.0
) -> tuple[str, Callable[[], Awaitable[None]]]:
    """Serve on 127.0.0.1:``port`` (0: a free one) in the running loop; returns the URL and an
    async ``close`` that stops listening and drops open connections. ``flood``: one of
    ``FLOOD_MODES`` for chat and generate answers that never stop on their own before
    ``flood_seconds``."""
    answers, variants = build_answers(model)
    open_: set[asyncio.Transport] = set()
    loop = asyncio.get_running_loop()

    def protocol() -> FastNode:
        if flood is None:
            return FastNode(answers, variants, open_)
        return FloodNode(answers, variants, open_, flood, flood_seconds, model)

    server = await loop.create_server(protocol, "127.0.0.1", port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]

    async def close() -> None:
        server.close()
        for transport in list(open_):
            transport.close()
        await server.wait_closed()

    return f"http://127.0.0.1:{bound}", close


async def _serve(port: int, model: str, flood: str | None, flood_seconds: float) -> None:
    url, close = await start_fastnode(port, model, flood=flood, flood_seconds=flood_seconds)
    print(url, flush=True)
    try:
        await asyncio.Event().wait()  # until the process is signalled
    finally:
        await close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=11434, help="0 picks a free port")
    parser.add_argument("--model", default=MODEL, help="the one model it has, loaded")
    parser.add_argument("--flood", choices=FLOOD_MODES, help="chat/generate answers that flood")
    parser.add_argument("--flood-seconds", type=float, default=10.0)
    args = parser.parse_args()
    try:
        (uvloop.run if uvloop is not None else asyncio.run)(
            _serve(args.port, args.model, args.flood, args.flood_seconds))
    except KeyboardInterrupt:
        pass
