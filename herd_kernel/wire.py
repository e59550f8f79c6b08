"""Wire mechanics shared by the kernel and backends: the registry of client API dialects (error
bodies in the shape of the API that was called, in-stream errors, stream framing, token counts;
backends register them), whole-body reading, and request parsing helpers.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

#: The name of a client API dialect (see ``Dialect``), e.g. ``openai``.
Api = str

#: The id of the request being handled, set by the route that parsed it, for error logs.
REQUEST_ID = web.RequestKey("herd_request_id", str)
#: The app name of the client key the request presented (``herd_kernel.keys``), when it has one.
KEY_APP = web.RequestKey("herd_key_app", str)
#: The request's body as read, kept only while ``FLEET_LOG_BODIES`` is on, for its log line.
BODY = web.RequestKey("herd_body", bytes)

_JSON = "application/json; charset=utf-8"


@attrs.frozen(kw_only=True)
class Dialect:
    """A wire format: how its errors look (whole and in a stream), what separates its stream
    frames, and where its answers carry token counts. The kernel knows none by name: backends
    register the dialects of the APIs they serve (``register_dialect``) and the paths that speak
    each, and the kernel looks them up for error answers and for relaying streams."""

    name: str
    error_body: Callable[[int, str, str | None], dict[str, Any]]  # status, message, type
    stream_error: Callable[[str], bytes]  # message -> the stream's last frame
    delimiter: bytes = b"\n"  # between stream frames
    #: (prompt, completion) tokens from an answer: the whole body, or a stream's last frames
    counts: Callable[[bytes, bool], tuple[int | None, int | None]] = \
        lambda _data, _whole: (None, None)
    #: an engine's error answer -> "gone" (the model is not there), "client" (the request's own
    #: fault, relayed as it is) or None (the node's fault: try another)
    classify: Callable[[int, str], str | None] = attrs.field(
        default=lambda status, _message: http_fault(status))


def http_fault(status: int) -> str | None:
    """Plain HTTP's reading of an error status: a 4xx is the client's, except 408 and 429 (the
    node was busy); a 5xx is the node's."""
    return "client" if 400 <= status < 500 and status not in (408, 429) else None


def _plain_error(status: int, message: str, _type: str | None) -> dict[str, Any]:
    return {"error": message}


#: what the kernel answers in when no dialect owns a path: ``{"error": "..."}``
PLAIN = Dialect(name="plain", error_body=_plain_error,
                stream_error=lambda m: json.dumps({"error": m}).encode() + b"\n")
DIALECTS: dict[str, Dialect] = {PLAIN.name: PLAIN}
_EXACT: dict[str, str] = {}  # path -> dialect name
_PREFIXES: list[tuple[str, str]] = []  # (prefix, dialect name), longest first


def register_dialect(dialect: Dialect, *, paths: Sequence[str] = (),
                     prefixes: Sequence[str] = ()) -> None:
    """Make ``dialect`` known and the default for ``paths`` (exact) and ``prefixes``. The first
    registration of a name or path wins, so two backends that serve one API agree."""
    DIALECTS.setdefault(dialect.name, dialect)
    for path in paths:
        _EXACT.setdefault(path, dialect.name)
    for prefix in prefixes:
        if all(p != prefix for p, _ in _PREFIXES):
            _PREFIXES.append((prefix, dialect.name))
    _PREFIXES.sort(key=lambda item: -len(item[0]))


def dialect(name: str) -> Dialect:
    return DIALECTS.get(name, PLAIN)


def api_for_path(path: str) -> Api:
    name = _EXACT.get(path)
    if name is not None:
        return name
    for prefix, name in _PREFIXES:
        if path.startswith(prefix):
            return name
    return PLAIN.name


def error_body(api: Api, status: int, message: str, *, type_: str | None = None) -> dict[str, Any]:
    return dialect(api).error_body(status, message, type_)


def error_response(
    api: Api,
    status: int,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    type_: str | None = None,
) -> web.Response:
    body = json.dumps(error_body(api, status, message, type_=type_))
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


def stream_error(api: Api, message: str) -> bytes:
    """The last frame of a stream that failed after its first byte, in the stream's own format."""
    return dialect(api).stream_error(message)


class BadRequest(Exception):
    """A client error found while parsing; becomes a 4xx JSON error in the caller's API format."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    @property
    def closes(self) -> bool:
        """After a 408 or 413 the rest of the body is not worth reading: close the connection."""
        return self.status in (408, 413)


async def read_body(
    request: web.Request, max_bytes: int, idle_timeout: float | None = None
) -> bytes:
    """The whole body, however it arrives (any number of writes, ``Content-Length`` or chunked,
    ``gzip``/``deflate``), or ``BadRequest``: 413 past ``max_bytes`` (counted after inflation, so
    a small bomb stops at the limit), 415 for another encoding, 400 for a corrupt one, 408 when
    the client goes silent for ``idle_timeout`` seconds mid-body. The router's server leaves
    bodies as they came (``serve`` turns aiohttp's own decompression off), so that every one of
    these answers is the API's own JSON."""
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise BadRequest(_too_large(max_bytes), 413)
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    wbits = _ENCODINGS.get(encoding)
    if wbits is None:
        raise BadRequest(f"unsupported Content-Encoding {encoding[:40]!r}: send the body plain, "
                         "gzip or deflate", 415)
    content = request.content
    try:
        if content.is_eof():  # the whole body is here already (most small bodies): no waiting
            raw = content.read_nowait()
            if len(raw) > max_bytes:
                raise BadRequest(_too_large(max_bytes), 413)
        else:
            raw = await _read_chunks(content, max_bytes, idle_timeout)
    except TimeoutError:
        raise BadRequest(f"request body not received: nothing arrived for {idle_timeout:g} s",
                         408) from None
    except RequestPayloadError as exc:  # broken chunked framing
        raise BadRequest(f"request body could not be read: {' '.join(str(exc).split())}") \
            from None
    if wbits is _PLAIN:
        return raw
    return await _inflate(raw, wbits, max_bytes)


async def _read_chunks(content: Any, max_bytes: int, idle_timeout: float | None) -> bytes:
    parts: list[bytes] = []
    size = 0
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(idle_timeout or None) as deadline:
        while chunk := await content.readany():
            size += len(chunk)
            if size > max_bytes:
                raise BadRequest(_too_large(max_bytes), 413)
            parts.append(chunk)
            if idle_timeout:
                deadline.reschedule(loop.time() + idle_timeout)  # silence, not the whole body
    return parts[0] if len(parts) == 1 else b"".join(parts)


_INFLATE_STEP = 1024 * 1024  # inflated bytes per step; the loop serves others between steps


async def _inflate(packed: bytes, wbits: int, max_bytes: int) -> bytes:
    """Inflate a gzip or deflate body a step at a time, refusing it as soon as it passes
    ``max_bytes``: a bomb costs at most the limit, never a long stall of the event loop."""
    if wbits == zlib.MAX_WBITS and packed and packed[0] & 0x0F != 8:
        wbits = -zlib.MAX_WBITS  # "deflate" sent raw, without the zlib header (as some clients do)
    inflater = zlib.decompressobj(wbits)
    parts: list[bytes] = []
    size = 0
    pending = packed
    try:
        while pending:
            out = inflater.decompress(pending, _INFLATE_STEP)
            pending = inflater.unconsumed_tail
            size += len(out)
            if size > max_bytes:
                raise BadRequest(_too_large(max_bytes), 413)
            parts.append(out)
            if inflater.eof and inflater.unused_data and wbits > zlib.MAX_WBITS:
                pending = inflater.unused_data  # another gzip member follows (RFC 1952 allows it)
                inflater = zlib.decompressobj(wbits)
            if pending:
                await asyncio.sleep(0)
        if not inflater.eof:
            raise BadRequest("request body could not be read: the compressed stream is cut short")
    except zlib.error as exc:
        raise BadRequest(f"request body could not be read: not valid {_wbits_name(wbits)} "
                         f"({exc})") from None
    return b"".join(parts)


def _wbits_name(wbits: int) -> str:
    return "gzip" if wbits > zlib.MAX_WBITS else "deflate"


_PLAIN = -1
# Content-Encoding -> zlib window bits (``_PLAIN``: as it is); anything else is a 415
_ENCODINGS = {"": _PLAIN, "identity": _PLAIN, "gzip": 16 + zlib.MAX_WBITS,
              "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _too_large(max_bytes: int) -> str:
    return f"request body too large (limit {max_bytes} bytes; FLEET_MAX_BODY_MB)"


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Parse a request body as Go's ``encoding/json`` (which Ollama uses) would accept it.

    - Numbers must be JSON numbers that fit a float64: ``NaN``, ``Infinity``, ``1e400`` and integers
      longer than a float can hold are refused, as Go refuses them. Integers beyond int64 become
      floats, as Go's ``any`` makes them.
    - Nesting deeper than Python's recursion allows (about 900 levels; Go allows 10,000) is
      refused with a 400, never a crash.
    - Top-level keys match case-insensitively and the last one wins, as Go matches struct fields:
      ``{"model": "a", "MODEL": "b"}`` means model ``b`` on a real Ollama, so it does here. The
      returned object then has each such key once, lower-cased, with the value Go would use.
    """
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        body = _decode(raw)
    except RecursionError:
        raise BadRequest("invalid JSON in request body: nested too deeply") from None
    except UnicodeDecodeError:
        raise BadRequest("invalid JSON in request body: not UTF-8") from None
    except ValueError as exc:  # JSONDecodeError, or a number the hooks refused
        raise BadRequest(f"invalid JSON in request body: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, not {_json_kind(body)}")
    for key in body:
        if key.lower() != key:
            return _fold_keys(raw)
    return body


async def read_json_object(
    request: web.Request, max_bytes: int, idle_timeout: float | None = None
) -> tuple[bytes, dict[str, Any]]:
    """Read the body whole and parse it; raise BadRequest with the message a client should see."""
    raw = await read_body(request, max_bytes, idle_timeout)
    return raw, parse_json_object(raw)


_MAX_FLOAT_DIGITS = 309  # longer integers cannot be a finite float64


def _parse_int(text: str) -> int | float:
    digits = len(text) - (text[0] == "-")
    if digits <= 18:
        return int(text)
    if digits > _MAX_FLOAT_DIGITS:
        raise ValueError(f"number {text[:12]}... ({digits} digits) is out of range")
    value = int(text)
    return value if -(2**63) <= value < 2**63 else float(value)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:24]} is out of range")
    return value


def _parse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float,
                            parse_constant=_parse_constant)


def _decode(raw: bytes, **hooks: Any) -> Any:
    """JSON from UTF-8 bytes (Go reads nothing else; a byte-order mark is an error there too)."""
    text = raw.decode("utf-8")
    if not hooks:
        return _DECODER.decode(text)
    return json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float,
                            parse_constant=_parse_constant, **hooks).decode(text)


def _fold_keys(raw: bytes) -> dict[str, Any]:
    """Re-read ``raw`` keeping the top-level pairs in document order, and fold them as Go does."""
    top: list[tuple[str, Any]] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal top
        top = items  # the outermost object is the last one the decoder finishes
        return dict(items)

    _decode(raw, object_pairs_hook=pairs)
    folded: dict[str, Any] = {}
    for key, value in top:
        folded.pop(key.lower(), None)  # the last spelling wins, in its document position
        folded[key.lower()] = value
    return folded


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return {list: "an array", str: "a string", bool: "a boolean"}.get(type(value), "a number")


_CLIENT_ID = re.compile(r"[\x20-\x7e]{1,64}")


def client_request_id(request: web.Request) -> str:
    """The client's own ``X-Request-Id`` when it is 1-64 printable ASCII characters, else "" (the
    router makes one). Anything else would be echoed in a header and stored in every trace: a
    byte that is not UTF-8 arrives as a lone surrogate, which SQLite refuses (with its batch)."""
    value = request.headers.get("X-Request-Id", "").strip()
    return value if _CLIENT_ID.fullmatch(value) else ""


def request_tags(request: web.Request, body: dict[str, Any]) -> tuple[str, ...]:
    """Tags from ``X-App-Tag``, ``X-Herd-Tags`` (comma-separated) and ``metadata.tags``; with no
    ``X-App-Tag``, the app name of the client's API key stands first in its place."""
    tags: list[str] = []
    if KEY_APP in request and "X-App-Tag" not in request.headers:
        tags.append(request[KEY_APP])
    for header in ("X-App-Tag", "X-Herd-Tags"):
        for value in request.headers.getall(header, ()):
            tags.extend(t.strip() for t in value.split(","))
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("tags"), list):
        tags.extend(t.strip() for t in metadata["tags"] if isinstance(t, str))
    seen: dict[str, None] = {}
    for tag in tags:
        if tag and len(tag) <= 128:
            seen.setdefault(tag, None)
    return tuple(list(seen)[:32])
