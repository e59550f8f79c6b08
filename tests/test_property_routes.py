"""Property-based tests (hypothesis) over every route the router serves and ``/heartbeat``:
generated hostile requests against one real router, one simulated Ollama node (herd-sim) and its
real node agent, over raw loopback sockets so the transport is ours to choose (1-5 writes with
pauses, chunked, gzip, deflate, an unknown Content-Encoding, a Content-Length that lies either way).

After every example these hold:

- no 5xx but the router's documented answers (502 every node failed, 503 busy, still reporting or
  full, 504), and every error body is in the API's own shape (Ollama ``{"error"}``, OpenAI
  ``{"error": {message, type, param, code}}``, Anthropic's ``{"type": "error"}``) or gin's plain
  404/405 text, and never holds a traceback;
- nothing was logged at ERROR (structlog, and stdlib ``aiohttp``/``asyncio``/``herd`` loggers) and
  the loop's exception handler saw nothing ("Task exception was never retrieved" and the like);
- every answer that carries an ``X-Request-Id`` has exactly one row in ``latency.db``;
- every slot is released (``fleet.node_in_flight`` all zero, ``queues.active`` empty, nobody
  waiting) and a plain chat still gets a 200; the fleet's caps hold.

How it runs: the tests are ``async def`` under ``@given``. pytest-asyncio (auto mode) sees the
hypothesis test and runs each generated example as one coroutine on the test's own event loop,
the loop its async fixtures were set up on, so the router, simulator and agent start once per test
function and serve every example (hence the ``function_scoped_fixture`` health check is off: the
sharing is the point, and the properties are checked after every example so one example cannot
hide another's damage).

Examples are derandomized (the same ones on every run, in CI too). For a longer local hunt:
``HERD_FUZZ_EXAMPLES=2000 HERD_FUZZ_SEED=random uv run --all-packages pytest
tests/test_property_routes.py -q -p no:randomly``; a failure prints the smallest example found.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import re
import uuid
import zlib
from typing import Any
from urllib.parse import quote

import aiohttp
import attrs
import pytest
from herd_analytics import store_of
from herd_sim import PROFILES, SimFleet
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from herd_kernel.testing import heartbeat_payload, wait_for
from herd_kernel.wire import api_for_path

MODEL = "llama3.2:3b"
SIM_NODE = "sim-a"
DEAD_URL = "http://127.0.0.1:9"  # nothing listens on the discard port: connections are refused
MAX_NODES, MAX_PENDING, MAX_MODELS = 6, 3, 12
BODY_TIMEOUT = 0.3
ROUTER_ENV = {
    "FLEET_BODY_TIMEOUT": str(BODY_TIMEOUT),
    "FLEET_MAX_BODY_MB": "1",
    "FLEET_MAX_NODES": str(MAX_NODES),
    "FLEET_MAX_PENDING_NODES": str(MAX_PENDING),
    "FLEET_MAX_MODELS_PER_NODE": str(MAX_MODELS),
    "FLEET_ENROLL_MINUTES": "0",
}
ALLOWED_5XX = {502, 503, 504}


def fuzz_settings(examples: int) -> settings:
    """``examples`` by default; ``HERD_FUZZ_EXAMPLES`` raises it, ``HERD_FUZZ_SEED=random`` lets
    hypothesis pick new examples each run (default: derandomized, the same every run);
    ``HERD_FUZZ_SHRINK=0`` reports a failing example as found, without shrinking it."""
    count = int(os.environ.get("HERD_FUZZ_EXAMPLES", "0") or 0) or examples
    phases = tuple(Phase) if os.environ.get("HERD_FUZZ_SHRINK", "1") != "0" else \
        (Phase.explicit, Phase.reuse, Phase.generate)
    return settings(
        phases=phases,
        max_examples=count,
        deadline=None,
        derandomize=os.environ.get("HERD_FUZZ_SEED", "") != "random",
        database=None,
        print_blob=False,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                               HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


# --- JSON text we control: raw number tokens, duplicate keys, lone surrogates --------------------


class Raw(str):
    """A JSON token written as it is: ``NaN``, ``1e400``, a 400-digit integer, a truncated value."""


class Pairs(list):
    """A JSON object written from (key, value) pairs: keys may repeat or differ only in case."""


def encode(value: Any, ascii_only: bool) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Pairs | dict):
        items = value if isinstance(value, Pairs) else value.items()
        return "{" + ",".join(f"{encode(k, ascii_only)}:{encode(v, ascii_only)}"
                              for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(encode(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)  # NaN and Infinity as Python writes them


def to_bytes(value: Any, ascii_only: bool) -> bytes:
    # a lone surrogate is a \\udXXX escape (valid JSON) or, unescaped, bytes that are not UTF-8
    return encode(value, ascii_only).encode("utf-8", "surrogatepass")


SPECIAL_TEXT = ["\ud800", "\udfff", "a\x00b", "\u202eevil\u202c", "\u200f\u061c", "\ufeff",
                "x" * 10_000, "🦙" * 50, "\\", '"', "\n\r\t", "../../etc/passwd", "%00", ""]
RAW_NUMBERS = ["NaN", "-NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "-0",
               "1E+2", "0.0000001", "9" * 40, "-" + "9" * 400, "9" * 5000, "1.5e308",
               "2147483648", "-2147483649", "9223372036854775808", "01", "+1", ".5", "0x10"]

texts = st.one_of(st.text(max_size=30), st.sampled_from(SPECIAL_TEXT),
                  st.builds(lambda a, s, b: a + s + b, st.text(max_size=5),
                            st.sampled_from(SPECIAL_TEXT), st.text(max_size=5)))
numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**53 + 1, 2**63,
                     2**64]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(RAW_NUMBERS).map(Raw),
)


def deep(depth: int, kind: str) -> Raw:
    return Raw("[" * depth + "]" * depth if kind == "[" else '{"a":' * depth + "1" + "}" * depth)


nesting = st.builds(deep, st.integers(1, 3000), st.sampled_from(["[", "{"]))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
hostile = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)), max_leaves=6)
hostile = st.one_of(hostile, nesting)


def sometimes(sane: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a sane value, sometimes anything at all."""
    return st.one_of(sane, sane, sane, sane, hostile)


# --- request bodies ------------------------------------------------------------------------------

OPTION_KEYS = ["num_ctx", "num_predict", "temperature", "seed", "top_k", "top_p", "stop",
               "num_gpu", "num_thread", "repeat_penalty", "mirostat"]
messages = st.lists(st.fixed_dictionaries({
    "role": sometimes(st.sampled_from(["user", "system", "assistant", "tool"])),
    "content": sometimes(st.sampled_from(["hi", "why is the sky blue?"])),
}), max_size=3)


@st.composite
def inference_body(draw: st.DrawFn, path: str) -> Pairs:
    """A body shaped like the route's request, with hostile values, repeated and re-cased keys."""
    api = api_for_path(path)
    pairs = Pairs()
    if draw(st.integers(0, 9)):  # mostly a model the fleet holds
        pairs.append(("model", draw(st.one_of(st.just(MODEL), st.just(MODEL), hostile,
                                              st.sampled_from(["fuzz:1b", "", "LLAMA3.2:3B"])))))
    if path in ("/api/chat", "/v1/chat/completions", "/v1/messages"):
        pairs.append(("messages", draw(sometimes(messages))))
    elif path in ("/api/generate", "/v1/completions"):
        pairs.append(("prompt", draw(sometimes(st.sampled_from(["hi", ""])))))
    elif path == "/v1/responses":
        pairs.append(("input", draw(sometimes(st.sampled_from(["hi", ""])))))
    else:  # embeddings
        key = "prompt" if path == "/api/embeddings" else "input"
        pairs.append((key, draw(sometimes(st.sampled_from(["hi", ["a", "b"]])))))
    optional: dict[str, st.SearchStrategy[Any]] = {
        "stream": sometimes(st.booleans()),
        "keep_alive": sometimes(st.sampled_from(["5m", 0, -1, "0", "-1s", "1h", 30, "abc"])),
        "think": sometimes(st.sampled_from([True, False, "low", "high"])),
        "fallback_models": sometimes(st.lists(st.sampled_from([MODEL, "qwen2.5:7b"]),
                                              max_size=2)),
        "format": sometimes(st.sampled_from(["json", {"type": "object"}])),
        "metadata": sometimes(st.fixed_dictionaries({"tags": st.lists(texts, max_size=3)})),
    }
    if api == "ollama":
        optional["options"] = sometimes(st.dictionaries(
            st.sampled_from(OPTION_KEYS), sometimes(st.integers(1, 8)), max_size=4))
    else:
        optional["max_tokens"] = sometimes(st.integers(1, 8))
        optional["max_completion_tokens"] = sometimes(st.integers(1, 8))
        optional["stream_options"] = sometimes(st.fixed_dictionaries(
            {"include_usage": st.booleans()}))
    for key in draw(st.lists(st.sampled_from(sorted(optional)), unique=True, max_size=4)):
        pairs.append((key, draw(optional[key])))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):  # a key again, in another case or not
        key, _value = pairs[draw(st.integers(0, len(pairs) - 1))]
        spelling = draw(st.sampled_from([key, key.upper(), key.title(), key.swapcase()]))
        pairs.append((spelling, draw(st.one_of(st.just(_value), hostile))))
    if draw(st.integers(0, 9)) == 0:
        pairs.append((draw(texts), draw(hostile)))
    return pairs


@st.composite
def body_bytes(draw: st.DrawFn, path: str, method: str) -> bytes:
    """The bytes of a request body: shaped for the route, or any JSON, bytes, a cut, nothing."""
    kind = draw(st.sampled_from(["shaped", "shaped", "shaped", "json", "bytes", "cut", "empty"]))
    ascii_only = draw(st.booleans())
    if kind == "empty" or (method in ("GET", "HEAD") and draw(st.booleans())):
        return b""
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return to_bytes(draw(hostile), ascii_only)
    whole = to_bytes(draw(inference_body(path)), ascii_only)
    if kind == "cut":
        return whole[: draw(st.integers(0, max(0, len(whole) - 1)))]
    return whole


# --- transport -----------------------------------------------------------------------------------

ENCODINGS_REFUSED = ["br", "compress", "zstd", "gzip, gzip", "GZIP ;q=1", "x-unknown"]


@attrs.frozen
class Transport:
    """How a body travels: ``length`` (Content-Length, ``writes`` writes), ``chunked``, ``gzip``,
    ``deflate``, ``refused`` (an encoding the router does not take), ``short`` (Content-Length
    shorter than the body: the rest is garbage), ``long`` (longer: the client then goes silent)."""

    kind: str
    writes: int = 1
    pause_ms: int = 0
    extra: int = 0
    encoding: str = ""


transports = st.builds(
    Transport,
    kind=st.sampled_from(["length", "length", "length", "chunked", "gzip", "deflate", "refused",
                          "short", "long"]),
    writes=st.integers(1, 5),
    pause_ms=st.integers(0, 15),
    extra=st.integers(1, 500),
    encoding=st.sampled_from(ENCODINGS_REFUSED),
)


def pieces(data: bytes, count: int) -> list[bytes]:
    step = max(1, -(-len(data) // max(1, count)))
    return [data[i:i + step] for i in range(0, len(data), step)] or [b""]


def frame(method: str, target: str, body: bytes, transport: Transport,
          headers: dict[str, bytes]) -> list[bytes]:
    """The writes that send this request (after them the client sends nothing more)."""
    lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name.encode() + b": " + value for name, value in headers.items()]
    kind = transport.kind
    if kind == "gzip":
        body = gzip.compress(body)
        lines.append(b"Content-Encoding: gzip")
    elif kind == "deflate":
        body = zlib.compress(body)
        lines.append(b"Content-Encoding: deflate")
    elif kind == "refused":
        lines.append(b"Content-Encoding: " + transport.encoding.encode())
    if kind == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces(body, transport.writes)
                           if p) + b"0\r\n\r\n"
    else:
        declared = len(body)
        if kind == "short" and body:
            declared = len(body) // 2
        elif kind == "long":
            declared = len(body) + transport.extra
        if body or kind == "long" or method in ("POST", "PUT", "PATCH"):
            lines.append(b"Content-Length: %d" % declared)
        payload = body
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    parts = pieces(payload, transport.writes)
    parts[0] = head + parts[0]
    return parts


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


class _Collect(asyncio.Protocol):
    """A client connection that keeps every byte it receives, even when the router closes it
    while the client is still writing (a ``StreamReader`` would drop them for the error)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def exchange(port: int, parts: list[bytes], pause_ms: int) -> Reply:
    """Send ``parts`` as separate writes on a new connection and read the first answer whole
    (``Connection: close``: the router closes after its answer, a silent client's too)."""
    loop = asyncio.get_running_loop()
    transport, conn = await loop.create_connection(_Collect, "127.0.0.1", port)
    try:
        for index, part in enumerate(parts):
            if index and pause_ms:
                await asyncio.sleep(pause_ms / 1000)
            if transport.is_closing():
                break  # the router answered (413, 415, 400) before the rest was sent
            transport.write(part)
        await asyncio.wait_for(asyncio.shield(conn.closed), 30)
    finally:
        transport.close()
    return parse_reply(bytes(conn.data))


def parse_reply(data: bytes) -> Reply:
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no complete answer: {data[:200]!r}"
    status_line, *header_lines = head.split(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode()] = value.strip().decode("utf-8", "surrogateescape")
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2:]
        return Reply(status, headers, bytes(body))
    length = headers.get("content-length")
    return Reply(status, headers, rest[: int(length)] if length is not None else rest)


# --- the harness: one router, one simulated node, and the watchers -------------------------------


class Watch(logging.Handler):
    """ERROR records from stdlib loggers and whatever reaches the loop's exception handler."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(f"{record.name}: {record.getMessage()}"
                         + (" (with traceback)" if record.exc_info else ""))

    def loop_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.seen.append(f"loop: {context.get('message')} {context.get('exception')!r}")


WATCHED = ("aiohttp", "asyncio", "herd")


class Harness:
    """The running router and simulated node, and what watches them (a plain class: hypothesis
    prints a test's arguments, and this one's short name is enough)."""

    def __init__(self, router: Any, sim_url: str, watch: Watch,
                 structlog_entries: list[dict[str, Any]], routes: list[tuple[str, str]]) -> None:
        self.router = router
        self.sim_url = sim_url
        self.watch = watch
        self.structlog_entries = structlog_entries
        self.routes = routes  # (method, path template) from the app's router table
        # POST routes that read the body before anything else (the admin routes check first)
        self.reads_body = frozenset(p for m, p in routes
                                    if m == "POST" and not p.startswith("/fleet/"))
        self.checked_logs = 0

    def __repr__(self) -> str:
        return f"Harness({self.router.url})"

    @property
    def port(self) -> int:
        return int(self.router.url.rsplit(":", 1)[1])

    async def check(self, path: str, method: str, reply: Reply | None, *,
                    request_id: str | None = None, http_layer: bool = False) -> None:
        """The properties every example must leave true."""
        if reply is not None:
            check_reply(path, method, reply, http_layer=http_layer)
            # --hypothesis-show-statistics: what the examples reached
            event(f"HTTP {reply.status}" + (" traced" if "x-request-id" in reply.headers else ""))
        services = self.router.services
        fleet, queues = services.fleet, services.queues
        await wait_for(lambda: not queues.active and not any(fleet.node_in_flight.values())
                       and not queues.waiting_total and not queues.held, timeout=15)
        if reply is not None and "x-request-id" in reply.headers:
            await store_of(services).flush()
            wanted = reply.headers["x-request-id"]
            async with store_of(services).db.execute(
                    "SELECT COUNT(*) FROM request_traces WHERE request_id = ?", (wanted,)) as cur:
                [(count,)] = await cur.fetchall()
            assert count == 1, f"{count} trace rows for request {wanted!r} ({reply.status})"
            if request_id is not None:
                assert wanted == request_id[:64]
        assert len(fleet.nodes) <= MAX_NODES
        assert len(fleet.pending) <= MAX_PENDING
        assert all(len(n.available) + len(n.loaded) <= 2 * MAX_MODELS
                   for n in fleet.nodes.values())
        await self.still_serves()
        errors = [e for e in self.structlog_entries[self.checked_logs:]
                  if e.get("log_level") in ("error", "critical")]
        self.checked_logs = len(self.structlog_entries)
        assert not errors, errors
        assert not self.watch.seen, self.watch.seen

    async def still_serves(self) -> None:
        body = {"model": MODEL, "stream": False, "options": {"num_predict": 2},
                "messages": [{"role": "user", "content": "still there?"}]}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{self.router.url}/api/chat", json=body) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["done"] is True


def check_reply(path: str, method: str, reply: Reply, *, http_layer: bool = False) -> None:
    """No 5xx but the documented ones; errors in the API's own shape; never a traceback.
    ``http_layer``: aiohttp may refuse the message before any route sees it (a head no HTTP
    parser takes) with a plain-text 400, as Go's net/http answers a message it cannot read."""
    status, body = reply.status, reply.body
    assert status != 500 and (status < 500 or status in ALLOWED_5XX), (status, body[:300])
    assert b"Traceback" not in body and b'File "/' not in body, body[:300]
    if status < 400 or method == "HEAD" or (status == 403 and not body):
        return
    ctype = reply.headers.get("content-type", "")
    if ctype.startswith("text/plain") and http_layer and status == 400:
        return
    if ctype.startswith("text/plain"):  # gin's answers for a path or method nobody serves
        assert (status, body) in ((404, b"404 page not found"), (405, b"405 method not allowed")), \
            (status, body[:200])
        return
    assert ctype.startswith("application/json"), (status, ctype, body[:200])
    error = json.loads(body)
    api = api_for_path(path)
    if api == "openai":
        assert isinstance(error["error"]["message"], str), error
        assert {"message", "type", "param", "code"} <= set(error["error"]), error
    elif api == "anthropic":
        assert error["type"] == "error" and isinstance(error["error"]["message"], str), error
    else:
        assert isinstance(error["error"], str), error


@pytest.fixture
async def harness(herd_router, herd_agent):
    from structlog.testing import capture_logs

    profile = attrs.evolve(PROFILES["medium"], name=SIM_NODE, loaded=(MODEL,),
                           models=(MODEL, "nomic-embed-text:latest"), num_parallel=4)
    sims = SimFleet([profile], time_scale=0.01)
    await sims.start()
    watch = Watch()
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(watch.loop_handler)
    for name in WATCHED:
        logging.getLogger(name).addHandler(watch)
    try:
        with capture_logs() as entries:
            router = await herd_router(env=ROUTER_ENV)
            await herd_agent(router.url, sims.nodes[SIM_NODE].url, SIM_NODE, interval=0.2)
            await wait_for(lambda: SIM_NODE in router.services.fleet.nodes
                           and router.services.fleet.nodes[SIM_NODE].available)
            table = [(r.method, r.resource.canonical) for r in router.app.router.routes()
                     if r.resource is not None]
            yield Harness(router, sims.nodes[SIM_NODE].url, watch, entries, table)
    finally:
        for name in WATCHED:
            logging.getLogger(name).removeHandler(watch)
        loop.set_exception_handler(previous)
        await sims.stop()


# --- targets: every route in the table, every method, random paths -----------------------------

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "BREW"]
_PARAM = re.compile(r"\{[^}]*\}")
segments = st.one_of(st.sampled_from(["fz0", "fz1", "nobody", MODEL, "a/b", "..", "%00"]), texts)


@st.composite
def targets(draw: st.DrawFn, table: list[tuple[str, str]]) -> tuple[str, str, str]:
    """(method, path the router sees, request target as sent): a route from the table with its
    own or another method, its parameters filled in, or a path nobody serves."""
    kind = draw(st.sampled_from(["route", "route", "route", "other-method", "random"]))
    if kind == "random":
        path = "/" + "/".join(draw(st.lists(segments, max_size=4)))
        method = draw(st.sampled_from(METHODS))
    else:
        method, template = draw(st.sampled_from(table))
        if kind == "other-method":
            method = draw(st.sampled_from(METHODS))
        # a parameter is never the simulated node's id: removing it would only measure its return
        path = _PARAM.sub(lambda _m: draw(segments.filter(lambda s: s != SIM_NODE and s)),
                          template)
    target = quote(path, safe="/:%@", errors="surrogatepass")
    if draw(st.integers(0, 4)) == 0:
        target += "?" + quote(draw(texts), safe="=&", errors="surrogatepass")
    return method, path, target


_MAX_LINE = 8190 - 20  # aiohttp's limit on a request line (method, target, version)
_FIELD_BYTES = bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))  # legal in a header value


def extra_headers(draw: st.DrawFn) -> tuple[dict[str, bytes], str | None, bool]:
    """Headers for a request: a Content-Type, maybe a request id (ours, odd bytes, or bytes no
    HTTP parser takes), maybe tags; with the id we sent, and whether the head is not valid HTTP."""
    headers = {"Content-Type": draw(st.sampled_from(
        [b"application/json", b"application/json", b"text/plain",
         b"application/x-www-form-urlencoded"]))}
    kind = draw(st.sampled_from(["none", "none", "ours", "odd", "illegal"]))
    request_id = None
    if kind == "ours":
        request_id = uuid.uuid4().hex
        headers["X-Request-Id"] = request_id.encode()
    elif kind == "odd":
        value = draw(st.binary(min_size=1, max_size=100).map(
            lambda b: bytes(_FIELD_BYTES[c % len(_FIELD_BYTES)] for c in b).strip()))
        headers["X-Request-Id"] = value or b"x"
    elif kind == "illegal":
        headers["X-Request-Id"] = b"id" + draw(st.sampled_from([b"\x7f", b"\x00", b"\x01"]))
    if draw(st.booleans()):
        headers["X-Herd-Tags"] = quote(draw(texts), errors="surrogatepass").encode()[:300]
    return headers, request_id, kind == "illegal"


async def one_request(harness: Harness, data: st.DataObject, method: str, path: str,
                      target: str) -> None:
    body = data.draw(body_bytes(path, method), label="body")
    transport = data.draw(transports, label="transport")
    headers, request_id, bad_head = extra_headers(data.draw)
    parts = frame(method, target, body, transport, headers)
    reply = await exchange(harness.port, parts, transport.pause_ms)
    refused = bad_head or len(target) > _MAX_LINE or method == "BREW"  # no HTTP method
    # garbage after a short Content-Length may reach aiohttp's parser with the request itself
    http_layer = refused or transport.kind == "short"
    if refused:
        assert reply.status == 400, (reply.status, reply.body[:200])
    elif method == "POST" and path in harness.reads_body:
        if transport.kind == "long":
            assert reply.status == 408, (reply.status, reply.body[:200])
        elif transport.kind == "refused":
            assert reply.status == 415, (reply.status, reply.body[:200])
    await harness.check(path, method, reply, request_id=request_id, http_layer=http_layer)


# --- the properties ------------------------------------------------------------------------------


@fuzz_settings(80)
@given(data=st.data())
async def test_any_route_any_method_any_body(harness, data):
    method, path, target = data.draw(targets(harness.routes), label="target")
    await one_request(harness, data, method, path, target)


@fuzz_settings(100)
@given(data=st.data())
async def test_inference_routes_with_hostile_bodies(harness, data):
    path = data.draw(st.sampled_from(sorted(harness.reads_body - {"/heartbeat"})), label="path")
    await one_request(harness, data, "POST", path, path)


HEARTBEAT_FIELDS = [
    "timestamp", "node_id", "instance_id", "agent_version", "hostname", "draining", "paused",
    "gpus", "extras", "thermal", "cpu", "cpu.cores_physical", "cpu.utilization_pct",
    "memory", "memory.total_gb", "memory.used_gb", "memory.available_gb", "disk.total_gb",
    "ollama", "ollama.url", "ollama.version", "ollama.num_parallel", "ollama.healthy",
    "ollama.models_loaded", "ollama.models_available", "ollama.models_loaded.0",
    "ollama.models_loaded.0.name", "ollama.models_loaded.0.size_vram",
    "ollama.models_loaded.0.context_length", "ollama.models_loaded.0.expires_at",
    "ollama.models_available.0.capabilities", "ollama.models_available.0.context_length",
]


def mutate(payload: dict[str, Any], where: str, value: Any) -> None:
    """Set (or, for ``...``, delete) the field at dotted path ``where`` if its parent exists."""
    *parents, last = where.split(".")
    node: Any = payload
    for step in parents:
        node = node[int(step)] if isinstance(node, list) and step.isdigit() and \
            int(step) < len(node) else node.get(step) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        if value is Ellipsis:
            node.pop(last, None)
        else:
            node[last] = value
    elif isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = None if value is Ellipsis else value


def _not_model(name: Any) -> bool:
    return not (isinstance(name, str) and name.strip().lower().startswith("llama3.2"))


@fuzz_settings(80)
@given(data=st.data())
async def test_heartbeats_from_this_machine(harness, data):
    """Hostile heartbeats from 127.0.0.1 (a local node: admitted at once), in a small space of
    node ids so the registry stays bounded, and random ids that must meet FLEET_MAX_NODES."""
    draw = data.draw
    node_id = draw(st.one_of(st.sampled_from(["fz0", "fz1", "fz2"]), texts)
                   .filter(lambda n: n != SIM_NODE), label="node_id")
    url = draw(st.one_of(st.sampled_from([harness.sim_url, harness.sim_url, DEAD_URL]), texts),
               label="url")
    names = st.one_of(st.sampled_from([MODEL, "fuzz:1b", "qwen2.5:14b", "FUZZ:1B"]), texts)
    loaded = draw(st.lists(names, max_size=3), label="loaded")
    available = draw(st.lists(names, max_size=MAX_MODELS + 2), label="available")
    if url != harness.sim_url:  # only a node that can answer may claim the model chats go to
        loaded = [m for m in loaded if _not_model(m)]
        available = [m for m in available if _not_model(m)]
    payload = heartbeat_payload(node_id, url=url, loaded=loaded, available=available)
    payload["instance_id"] = draw(st.sampled_from(["", "i1", "i2"]))
    for where in draw(st.lists(st.sampled_from(HEARTBEAT_FIELDS), max_size=4), label="fields"):
        mutate(payload, where, draw(st.one_of(st.just(Ellipsis), hostile)))
    if url != harness.sim_url:  # a mutation may have named the model again
        for key in ("models_loaded", "models_available"):
            entries = (payload.get("ollama") or {}).get(key) if isinstance(
                payload.get("ollama"), dict) else None
            if isinstance(entries, list):
                entries[:] = [e for e in entries
                              if not isinstance(e, dict) or _not_model(e.get("name"))]
    body = to_bytes(payload, draw(st.booleans()))
    transport = draw(transports.filter(lambda t: t.kind in ("length", "chunked", "gzip")),
                     label="transport")
    parts = frame("POST", "/heartbeat", body, transport,
                          {"Content-Type": b"application/json"})
    reply = await exchange(harness.port, parts, transport.pause_ms)
    assert reply.status in (200, 400, 409, 503), (reply.status, reply.body[:300])
    if reply.status == 503:
        assert b"fleet is full" in reply.body, reply.body[:300]
    await harness.check("/heartbeat", "POST", reply)
