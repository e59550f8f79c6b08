"""Wire formats shared by the kernel and backends: JSON error bodies in the shape of the API that
was called (Ollama native, OpenAI, or Anthropic's Messages on ``/v1/messages``), in-stream errors,
and request parsing helpers.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal

from aiohttp import web

Api = Literal["ollama", "openai", "anthropic"]

_OPENAI_TYPES = {400: "invalid_request_error", 404: "not_found_error", 401: "authentication_error"}
_JSON = "application/json; charset=utf-8"


# Anthropic's error types by status, as Ollama's anthropic.NewError chooses them
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                    403: "permission_error", 404: "not_found_error", 429: "rate_limit_error",
                    503: "overloaded_error", 529: "overloaded_error"}


def api_for_path(path: str) -> Api:
    if path.startswith("/v1/"):
        return "anthropic" if path == "/v1/messages" else "openai"
    return "ollama"


def error_body(api: Api, status: int, message: str, *, type_: str | None = None) -> dict[str, Any]:
    if api == "openai":
        kind = type_ or _OPENAI_TYPES.get(status, "api_error")
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}
    if api == "anthropic":
        kind = type_ or _ANTHROPIC_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message},
                "request_id": f"req_{os.urandom(12).hex()}"}
    return {"error": message}


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
    if api == "openai":
        payload = {"error": {"message": message, "type": "api_error", "param": None, "code": None}}
        return b"data: " + json.dumps(payload).encode() + b"\n\n"
    if api == "anthropic":  # Anthropic's stream error event
        payload = {"type": "error", "error": {"type": "api_error", "message": message}}
        return b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"
    return json.dumps({"error": message}).encode() + b"\n"


class BadRequest(Exception):
    """A client error found while parsing; becomes a 4xx JSON error in the caller's API format."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


async def read_json_object(request: web.Request, max_bytes: int) -> tuple[bytes, dict[str, Any]]:
    """Read the body once and parse it; raise BadRequest with the message a client should see."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise BadRequest(f"request body too large (limit {max_bytes} bytes)", 413)
    try:
        raw = await request.content.read(max_bytes + 1)
    except ValueError as exc:
        raise BadRequest(str(exc), 413) from None
    if len(raw) > max_bytes:
        raise BadRequest(f"request body too large (limit {max_bytes} bytes)", 413)
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"invalid JSON in request body: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, not {_json_kind(body)}")
    return raw, body


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return {list: "an array", str: "a string", bool: "a boolean"}.get(type(value), "a number")


def request_tags(request: web.Request, body: dict[str, Any]) -> tuple[str, ...]:
    """Tags from ``X-App-Tag``, ``X-Herd-Tags`` (comma-separated) and ``metadata.tags``."""
    tags: list[str] = []
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
