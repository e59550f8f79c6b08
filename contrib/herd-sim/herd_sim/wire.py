"""Byte-level details that make the simulator indistinguishable from Ollama on the wire.

Ollama is a Go program; clients see Go's encoding choices. This module reproduces them:
``encoding/json`` output (compact, HTML characters escaped), ``time.Time`` in RFC 3339 with
nanoseconds, ``time.ParseDuration`` for ``keep_alive`` and its error texts, and the error texts
Go's JSON decoder produces for bad request bodies.
"""

from __future__ import annotations

import json
import math
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "FOREVER",
    "ApiError",
    "go_json",
    "go_time",
    "parse_body",
    "parse_keep_alive",
    "rfc3339_utc_now",
]

JSON_TYPE = "application/json; charset=utf-8"
NDJSON_TYPE = "application/x-ndjson"
SSE_TYPE = "text/event-stream"
TEXT_TYPE = "text/plain; charset=utf-8"

# time.Duration(math.MaxInt64): what Ollama stores for a negative keep_alive ("forever")
FOREVER = 9_223_372_036.854775807


class ApiError(Exception):
    """An error Ollama reports as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- JSON ----------------------------------------------------------------------------------------

_HTML_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                 "\u2029": "\\u2029"}
_HTML_RE = re.compile("[<>&\u2028\u2029]")


def go_json(value: Any) -> str:
    """``json.Marshal``: compact, UTF-8 kept, ``<``, ``>``, ``&`` escaped as Go does by default.

    The escaped characters can only occur inside strings, so replacing them in the output is safe.
    """
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return _HTML_RE.sub(lambda m: _HTML_ESCAPES[m.group()], text)


# --- time ----------------------------------------------------------------------------------------


def rfc3339_utc_now() -> str:
    """``time.Now().UTC()`` as Ollama's ``created_at``: UTC, ``Z``, 9 fractional digits."""
    ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{frac:09d}Z"


def go_time(moment: datetime) -> str:
    """An aware datetime in Go's RFC3339Nano layout: trailing fractional zeros trimmed, the
    offset as ``+02:00`` (``Z`` for UTC). Used for ``modified_at`` and ``expires_at``."""
    base = moment.strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{moment.microsecond:06d}".rstrip("0")
    offset = moment.utcoffset() or timedelta(0)
    if offset == timedelta(0):  # Go's "Z07:00" prints Z for any zero offset
        zone = "Z"
    else:
        minutes = int(offset.total_seconds()) // 60
        sign = "-" if minutes < 0 else "+"
        zone = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return f"{base}{'.' + frac if frac else ''}{zone}"


def local_from_epoch(epoch: float) -> datetime:
    """Epoch seconds as an aware datetime in the machine's local zone (Ollama prints local time)."""
    return datetime.fromtimestamp(epoch).astimezone()


def far_future() -> datetime:
    """``time.Now().Add(math.MaxInt64)``: the ``expires_at`` of a model kept forever (~2318)."""
    return (datetime.now().astimezone() + timedelta(seconds=FOREVER))


# --- keep_alive ----------------------------------------------------------------------------------

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
          "h": 3600.0}
_DURATION_PART = re.compile(r"(\d*\.?\d*)([^\d.]*)")


def parse_go_duration(text: str) -> float:
    """``time.ParseDuration`` in seconds, with Go's error texts."""
    original = text
    invalid = ApiError(400, f'time: invalid duration "{original}"')
    sign = 1.0
    if text[:1] in "+-" and text:
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if text == "0":
        return 0.0
    if not text:
        raise invalid
    total = 0.0
    pos = 0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None or match.end() == pos:
            raise invalid
        number, unit = match.group(1), match.group(2)
        if number in ("", "."):
            raise invalid
        if not unit:
            raise ApiError(400, f'time: missing unit in duration "{original}"')
        if unit not in _UNITS:
            raise ApiError(400, f'time: unknown unit "{unit}" in duration "{original}"')
        total += float(number) * _UNITS[unit]
        pos = match.end()
    return sign * total


def parse_keep_alive(value: Any, default: float | None) -> float | None:
    """``api.Duration`` from a request body, in seconds; ``None`` means forever (negative).

    ``value`` absent (``None``) gives ``default``. Strings are Go durations, numbers are seconds.
    """
    if value is None:
        return default
    if isinstance(value, bool):
        raise ApiError(400, "Unsupported type: 'bool'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = parse_go_duration(value)
    else:
        kind = "[]interface {}" if isinstance(value, list) else "map[string]interface {}"
        raise ApiError(400, f"Unsupported type: '{kind}'")
    if math.isnan(seconds):
        raise ApiError(400, f"Unsupported type: '{value}'")
    return None if seconds < 0 else seconds


def parse_profile_keep_alive(text: str) -> float | None:
    """``OLLAMA_KEEP_ALIVE`` from a profile: a Go duration or plain seconds."""
    try:
        return parse_keep_alive(float(text), None)
    except ValueError:
        return parse_keep_alive(text, None)


# --- request bodies ------------------------------------------------------------------------------

# Go type names for the fields the simulator reads, per request struct (for decode error texts)
_FIELD_TYPES: dict[str, dict[str, str]] = {
    "ChatRequest": {"model": "string", "messages": "[]api.Message", "stream": "bool",
                    "format": "json.RawMessage", "options": "map[string]interface {}",
                    "tools": "api.Tools"},
    "GenerateRequest": {"model": "string", "prompt": "string", "suffix": "string",
                        "system": "string", "template": "string", "context": "[]int",
                        "stream": "bool", "raw": "bool", "images": "[]api.ImageData",
                        "options": "map[string]interface {}"},
    "EmbedRequest": {"model": "string", "truncate": "bool", "dimensions": "int",
                     "options": "map[string]interface {}"},
    "EmbeddingRequest": {"model": "string", "prompt": "string",
                         "options": "map[string]interface {}"},
    "ShowRequest": {"model": "string", "name": "string", "verbose": "bool"},
    "PullRequest": {"model": "string", "name": "string", "stream": "bool", "insecure": "bool"},
    "DeleteRequest": {"model": "string", "name": "string"},
    "ChatCompletionRequest": {"model": "string", "messages": "[]openai.Message",
                              "stream": "bool", "max_tokens": "int", "seed": "int",
                              "temperature": "float64", "top_p": "float64",
                              "tools": "[]api.Tool", "stream_options": "openai.StreamOptions"},
    "CompletionRequest": {"model": "string", "prompt": "string", "stream": "bool",
                          "max_tokens": "int", "seed": "int", "suffix": "string"},
    "EmbedRequest_openai": {"model": "string", "encoding_format": "string", "dimensions": "int"},
}


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _accepts(go_type: str, value: Any) -> bool:
    kind = _json_kind(value)
    if go_type in ("json.RawMessage", "interface {}"):
        return True
    if go_type == "string":
        return kind == "string"
    if go_type == "bool":
        return kind == "bool"
    if go_type == "int":
        return kind == "number" and float(value).is_integer()
    if go_type == "float64":
        return kind == "number"
    if go_type.startswith("[]") or go_type == "api.Tools":
        return kind == "array"
    return kind == "object"


def _go_syntax_error(text: str, err: json.JSONDecodeError) -> str:
    if err.pos >= len(text.rstrip()):
        return "unexpected EOF"
    char = text[err.pos]
    shown = char if char != "'" else "\\'"
    if err.msg.startswith("Expecting ',' delimiter"):
        where = "after object key:value pair" if _inside_object(text, err.pos) else \
            "after array element"
    elif err.msg.startswith("Expecting ':' delimiter"):
        where = "after object key"
    elif err.msg.startswith("Expecting property name"):
        where = "looking for beginning of object key string"
    elif err.msg.startswith("Extra data"):
        where = "after top-level value"
    else:
        where = "looking for beginning of value"
    return f"invalid character '{shown}' {where}"


def _inside_object(text: str, pos: int) -> bool:
    depth: list[str] = []
    in_string = escaped = False
    for char in text[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth.append(char)
        elif char in "]}" and depth:
            depth.pop()
    return bool(depth) and depth[-1] == "{"


def parse_body(raw: bytes, struct: str, *, empty_message: str = "missing request body") -> dict[str, Any]:
    """Decode a request body the way gin's ``ShouldBindJSON`` into ``struct`` would.

    Empty body -> 400 ``empty_message`` (``missing request body`` natively, ``EOF`` on /v1);
    syntax errors and type mismatches -> 400 with Go's ``encoding/json`` text. JSON ``null``
    fields are dropped (Go leaves them at their zero value).
    """
    text = raw.decode("utf-8", errors="replace")
    if not text.strip():
        raise ApiError(400, empty_message)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ApiError(400, _go_syntax_error(text, err)) from None
    if value is None:
        return {}
    go_struct = struct.split("_")[0]
    package = "openai" if struct in ("ChatCompletionRequest", "CompletionRequest",
                                     "EmbedRequest_openai") else "api"
    if not isinstance(value, dict):
        raise ApiError(400, f"json: cannot unmarshal {_json_kind(value)} into Go value of type "
                            f"{package}.{go_struct}")
    body = {k: v for k, v in value.items() if v is not None}
    for field, go_type in _FIELD_TYPES.get(struct, {}).items():
        if field in body and not _accepts(go_type, body[field]):
            raise ApiError(400, f"json: cannot unmarshal {_json_kind(body[field])} into Go struct "
                                f"field {go_struct}.{field} of type {go_type}")
    return body


_INT_OPTIONS = {"num_ctx", "num_predict", "seed", "top_k", "num_keep", "repeat_last_n",
                "num_batch", "num_gpu", "main_gpu", "num_thread"}
_FLOAT_OPTIONS = {"temperature", "top_p", "min_p", "typical_p", "repeat_penalty",
                  "presence_penalty", "frequency_penalty"}


def parse_options(value: Any) -> dict[str, Any]:
    """``options``: unknown keys are ignored (as Ollama does); known keys must have their type.

    Numbers arrive as JSON numbers and integer options are truncated like Go's conversion.
    """
    if not value:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"json: cannot unmarshal {_json_kind(value)} into Go struct field "
                            "ChatRequest.options of type map[string]interface {}")
    options: dict[str, Any] = {}
    for key, item in value.items():
        if item is None:
            continue
        if key in _INT_OPTIONS:
            if isinstance(item, bool) or not isinstance(item, int | float):
                raise ApiError(400, f'option "{key}" must be of type integer')
            options[key] = int(item)
        elif key in _FLOAT_OPTIONS:
            if isinstance(item, bool) or not isinstance(item, int | float):
                raise ApiError(400, f'option "{key}" must be of type float')
            options[key] = float(item)
        elif key == "stop":
            if isinstance(item, str):
                options[key] = [item]
            elif isinstance(item, list) and all(isinstance(s, str) for s in item):
                options[key] = list(item)
            else:
                raise ApiError(400, 'option "stop" must be of type array')
        else:
            options[key] = item
    return options


def human_bytes(size: int) -> str:
    """Ollama's ``format.HumanBytes2`` ("4.5 GiB"), used in the out-of-memory error."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
