"""The client API dialects Herd serves: Ollama's native API, OpenAI's, and Anthropic's Messages
(as Ollama serves it on ``/v1/messages``). Each backend that answers one of them calls
``register()``; the kernel then finds a path's dialect for its errors and stream relaying."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from herd_kernel.models import register_default_registry
from herd_kernel.wire import Dialect, http_fault, register_dialect

_OPENAI_TYPES = {400: "invalid_request_error", 404: "not_found_error", 401: "authentication_error"}
# Anthropic's error types by status, as Ollama's anthropic.NewError chooses them
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                    403: "permission_error", 404: "not_found_error", 429: "rate_limit_error",
                    503: "overloaded_error", 529: "overloaded_error"}

# Ollama's wording when a model is not on the node ("model 'x' not found", 'model "x" not found,
# try pulling it first')
_MODEL_GONE = re.compile(r"""model ['"].*['"] not found""")
# a 500 that is the request's fault, not the node's: Ollama reports some bad options that way
_CLIENT_FAULT = re.compile(
    r"must be of type|cannot unmarshal|invalid (?:character|option|value|input|think)|"
    r"does not support|is too short|out of range", re.IGNORECASE)


def count(value: object) -> int | None:
    """A token count from a node's JSON, which is not trusted: a whole number from 0 to
    2**63 - 1 (SQLite's INTEGER), else None; ``"12"``, ``true``, ``1.5``, ``1e400`` or ``[1]``
    are not counts."""
    if isinstance(value, float) and value.is_integer():  # 12.0 (inf and nan are not)
        value = int(value)
    return value if type(value) is int and 0 <= value < 1 << 63 else None


def _last_objects(data: bytes, whole: bool) -> list[dict[str, Any]]:
    """The answer's JSON object, or a stream's last few frames' objects, newest first."""
    text = data.decode("utf-8", "replace")
    if whole:
        texts = [text]
    else:
        lines = [ln for ln in text.split("\n") if ln.strip()]
        texts = [ln.removeprefix("data: ") for ln in reversed(lines[-4:])]
    found = []
    for candidate in texts:
        try:
            obj = json.loads(candidate)
        except ValueError:  # also a number of more than 4,300 digits
            continue
        if isinstance(obj, dict):
            found.append(obj)
    return found


def counts(data: bytes, whole: bool) -> tuple[int | None, int | None]:
    """Token counts from the last JSON object of an answer: Ollama's final chunk
    (``prompt_eval_count``, ``eval_count``), OpenAI's ``usage`` or Anthropic's."""
    for obj in _last_objects(data, whole):
        usage = obj.get("usage")
        if isinstance(usage, dict):
            if "input_tokens" in usage or "output_tokens" in usage:
                return count(usage.get("input_tokens")), count(usage.get("output_tokens"))
            return count(usage.get("prompt_tokens")), count(usage.get("completion_tokens"))
        if "eval_count" in obj or "prompt_eval_count" in obj:
            return count(obj.get("prompt_eval_count")), count(obj.get("eval_count"))
    return None, None


def classify(status: int, message: str) -> str | None:
    if status == 404 and _MODEL_GONE.search(message):
        return "gone"
    if status >= 500 and _CLIENT_FAULT.search(message):
        return "client"
    return http_fault(status)


def _ollama_error(status: int, message: str, _type: str | None) -> dict[str, Any]:
    return {"error": message}


def _openai_error(status: int, message: str, type_: str | None) -> dict[str, Any]:
    kind = type_ or _OPENAI_TYPES.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _anthropic_error(status: int, message: str, type_: str | None) -> dict[str, Any]:
    kind = type_ or _ANTHROPIC_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message},
            "request_id": f"req_{os.urandom(12).hex()}"}


def _ollama_stream_error(message: str) -> bytes:
    return json.dumps({"error": message}).encode() + b"\n"


def _openai_stream_error(message: str) -> bytes:
    payload = {"error": {"message": message, "type": "api_error", "param": None, "code": None}}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _anthropic_stream_error(message: str) -> bytes:  # Anthropic's stream error event
    payload = {"type": "error", "error": {"type": "api_error", "message": message}}
    return b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"


OLLAMA = Dialect(name="ollama", error_body=_ollama_error, stream_error=_ollama_stream_error,
                 delimiter=b"\n", counts=counts, classify=classify)
OPENAI = Dialect(name="openai", error_body=_openai_error, stream_error=_openai_stream_error,
                 delimiter=b"\n\n", counts=counts, classify=classify)
ANTHROPIC = Dialect(name="anthropic", error_body=_anthropic_error,
                    stream_error=_anthropic_stream_error, delimiter=b"\n\n", counts=counts,
                    classify=classify)


def register() -> None:
    """Make the three dialects known to the kernel, with the paths that speak each, and Ollama's
    model names: ``registry.ollama.ai/library/x`` is ``x``."""
    register_default_registry("registry.ollama.ai", "library")
    register_dialect(ANTHROPIC, paths=("/v1/messages",))
    register_dialect(OPENAI, prefixes=("/v1/",))
    register_dialect(OLLAMA, paths=("/",), prefixes=("/api/",))
