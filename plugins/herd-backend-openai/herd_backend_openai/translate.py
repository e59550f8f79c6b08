"""Ollama <-> OpenAI translation, pure: an Ollama client's body becomes an OpenAI-compatible
engine's request (``to_openai``), and the engine's answer becomes the Ollama body the client
expects, whole (``from_openai``) or streamed (``SseToNdjson``). No I/O, no globals.

The engine's JSON is never trusted: a value of the wrong type, a non-finite number or an absurd
integer is treated as absent, and nothing the engine sends makes these functions raise."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

CHAT, GENERATE, EMBED, EMBEDDINGS = "/api/chat", "/api/generate", "/api/embed", "/api/embeddings"
ROUTES = (CHAT, GENERATE, EMBED, EMBEDDINGS)

# Ollama option -> OpenAI field, for the options every engine here understands (top_k, min_p and
# repeat_penalty are extensions llama.cpp, llama-cpp-python, vLLM and LM Studio accept)
_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "stop": "stop",
    "num_predict": "max_tokens",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repeat_penalty",
}
# top-level fields that are consumed here or have no meaning for an engine that keeps its model
# loaded; anything else a client sends is announced as dropped
_CONSUMED = {
    CHAT: {"model", "messages", "tools", "format", "options", "stream"},
    GENERATE: {"model", "prompt", "suffix", "system", "images", "raw", "format", "options",
               "stream"},
    EMBED: {"model", "input", "dimensions"},
    EMBEDDINGS: {"model", "prompt"},
}
_INT_OPTIONS = {"top_k", "seed", "num_predict"}
_MAX_ERROR = 2000  # characters of an engine's error message passed on
_MAX_COUNT = 2**53  # a token count or duration past this is garbage, not a measurement


class TranslationError(ValueError):
    """A client body that cannot be put to an engine; ``str(error)`` is the 400 message, worded
    as Ollama words the same complaint."""


# --- requests: Ollama -> OpenAI -----------------------------------------------------------------


def to_openai(
    path: str, body: Mapping[str, Any], engine_model: str, *, engine: str = ""
) -> tuple[str, dict[str, Any], list[str]]:
    """``(upstream_path, upstream_body, dropped)`` for an Ollama request to ``path``. The model is
    ``engine_model`` (the id the engine listed); ``engine`` is the probe's engine name, for the
    one field engines spell differently (a JSON schema). ``dropped`` names the fields that could
    not be expressed (``"keep_alive"``, ``"options.num_ctx"``...), for the caller to announce."""
    if not isinstance(body, Mapping):
        raise TranslationError("request body must be a JSON object")
    dropped = [key for key, value in body.items()
               if key not in _CONSUMED.get(path, ()) and value is not None]
    if path == CHAT:
        messages = body.get("messages")
        if messages is None:
            messages = []
        if not isinstance(messages, list):
            raise TranslationError("messages must be a list")
        out: dict[str, Any] = {"model": engine_model, "messages": _messages(messages, dropped)}
        _tools(body.get("tools"), out)
        _sampling(body, out, dropped, engine)
        return "/v1/chat/completions", out, dropped
    if path == GENERATE:
        prompt = _text(body.get("prompt"), "prompt")
        suffix = body.get("suffix")
        if body.get("raw") is True or (isinstance(suffix, str) and suffix):
            out = {"model": engine_model, "prompt": prompt}
            if isinstance(suffix, str) and suffix:
                out["suffix"] = suffix
            for key in ("system", "images"):  # raw text has no place for them
                if body.get(key) and key not in dropped:
                    dropped.append(key)
            _sampling(body, out, dropped, engine)
            return "/v1/completions", out, dropped
        messages = []
        if isinstance(body.get("system"), str) and body["system"]:
            messages.append({"role": "system", "content": body["system"]})
        messages.append({"role": "user", "content": prompt, "images": body.get("images")})
        out = {"model": engine_model, "messages": _messages(messages, dropped)}
        _sampling(body, out, dropped, engine)
        return "/v1/chat/completions", out, dropped
    if path == EMBED:
        given = body.get("input")
        if given is None:
            given = []
        if not (isinstance(given, str) or (
                isinstance(given, list) and all(isinstance(s, str) for s in given))):
            raise TranslationError("invalid input type")
        out = {"model": engine_model, "input": given}
        dimensions = body.get("dimensions")
        if _is_int(dimensions) and dimensions > 0:
            out["dimensions"] = dimensions
        return "/v1/embeddings", out, dropped
    if path == EMBEDDINGS:
        return "/v1/embeddings", {"model": engine_model,
                                  "input": _text(body.get("prompt"), "prompt")}, dropped
    raise TranslationError(f"no OpenAI-compatible route for {path}")


def _text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TranslationError(f"{name} must be a string")
    return value


def _image_url(data: str) -> str:
    """A data URL for a bare base64 image (Ollama's form), its type read from the first bytes."""
    if data.startswith("data:"):
        return data
    for prefix, mime in (("iVBORw0KGgo", "image/png"), ("/9j/", "image/jpeg"),
                         ("R0lGOD", "image/gif"), ("UklGR", "image/webp")):
        if data.startswith(prefix):
            return f"data:{mime};base64,{data}"
    return f"data:image/png;base64,{data}"


def _messages(messages: list[Any], dropped: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    unanswered: list[tuple[str, str]] = []  # (call id, function name) awaiting a tool result
    for number, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TranslationError(f"messages[{number}] must be an object")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise TranslationError(f"messages[{number}].role is required")
        role = role.lower()
        content = _text(message.get("content"), f"messages[{number}].content")
        entry: dict[str, Any] = {"role": role}
        images = message.get("images")
        if images:
            if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
                raise TranslationError(f"messages[{number}].images must be a list of strings")
            entry["content"] = [{"type": "text", "text": content}] + [
                {"type": "image_url", "image_url": {"url": _image_url(i)}} for i in images]
        else:
            entry["content"] = content
        calls = message.get("tool_calls")
        if role == "assistant" and isinstance(calls, list) and calls:
            entry["tool_calls"] = []
            for call in calls:
                function = call.get("function") if isinstance(call, Mapping) else None
                if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
                    raise TranslationError(f"messages[{number}].tool_calls needs function.name")
                call_id = call.get("id")
                if not isinstance(call_id, str) or not call_id:
                    call_id = f"call_{number}_{len(entry['tool_calls'])}"
                arguments = function.get("arguments")
                entry["tool_calls"].append({
                    "id": call_id, "type": "function",
                    "function": {"name": function["name"],
                                 "arguments": arguments if isinstance(arguments, str)
                                 else json.dumps(arguments if arguments is not None else {})},
                })
                unanswered.append((call_id, function["name"]))
        if role == "tool":
            call_id = message.get("tool_call_id")
            name = message.get("tool_name") or message.get("name")
            if not isinstance(call_id, str) or not call_id:
                # Ollama clients often name the tool instead: answer its oldest open call
                match = next((c for c in unanswered if c[1] == name), None) or (
                    unanswered[0] if unanswered else None)
                call_id = match[0] if match else f"call_{number}"
            unanswered = [c for c in unanswered if c[0] != call_id]
            entry["tool_call_id"] = call_id
            if isinstance(name, str) and name:
                entry["name"] = name
        if message.get("thinking") and "messages.thinking" not in dropped:
            dropped.append("messages.thinking")
        out.append(entry)
    return out


def _tools(tools: Any, out: dict[str, Any]) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise TranslationError("tools must be a list")
    if tools:
        out["tools"] = [{"type": "function", **t} if isinstance(t, Mapping) and "type" not in t
                        else t for t in tools]


def _sampling(
    body: Mapping[str, Any], out: dict[str, Any], dropped: list[str], engine: str
) -> None:
    """``format``, ``options`` and ``stream``, shared by chat and generate."""
    fmt = body.get("format")
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, Mapping) and fmt and engine == "llama.cpp":
        # llama-cpp-python refuses "json_schema" (a 500); it and llama-server take this form
        out["response_format"] = {"type": "json_object", "schema": dict(fmt)}
    elif isinstance(fmt, Mapping) and fmt:
        out["response_format"] = {"type": "json_schema",
                                  "json_schema": {"name": "response", "schema": dict(fmt)}}
    elif fmt not in (None, ""):
        dropped.append("format")
    options = body.get("options")
    if isinstance(options, Mapping):
        for key, value in options.items():
            field = _OPTIONS.get(key)
            if value is None:
                continue
            if field is None:
                dropped.append(f"options.{key}")
                continue
            value = _option(key, value)
            if key == "num_predict" and value <= 0:
                if value not in (-1, -2):  # no limit, fill the context: nothing to send
                    dropped.append("options.num_predict")
                continue
            out[field] = value
    elif options is not None:
        raise TranslationError("options must be an object")
    stream = body.get("stream") is not False  # Ollama streams unless told not to
    out["stream"] = stream
    if stream:
        out["stream_options"] = {"include_usage": True}


def _option(key: str, value: Any) -> Any:
    """An option's value as Ollama would take it (numbers arrive as floats and integer options
    are truncated), or the error Ollama gives for a wrong type."""
    if key == "stop":
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise TranslationError('option "stop" must be of type array')
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value):
        kind = "integer" if key in _INT_OPTIONS else "float"
        raise TranslationError(f'option "{key}" must be of type {kind}')
    return int(value) if key in _INT_OPTIONS else value


# --- answers: OpenAI -> Ollama ------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(value: Any) -> int:
    """A non-negative count from the engine, 0 when it is anything else."""
    if _is_int(value) and 0 <= value <= _MAX_COUNT:
        return value
    if isinstance(value, float) and math.isfinite(value) and 0 <= value <= _MAX_COUNT:
        return int(value)
    return 0


def _ms_to_ns(value: Any) -> int:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        ns = value * 1_000_000
        if 0 <= ns <= _MAX_COUNT:
            return int(ns)
    return 0


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def created_at(ns: int | None = None) -> str:
    """RFC 3339 in UTC with nanoseconds, as Ollama writes ``created_at``."""
    ns = time.time_ns() if ns is None else ns
    seconds, fraction = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def _no_constant(name: str) -> None:
    return None  # NaN / Infinity, which Python's json would accept, read as null


def _finite(text: str) -> float | None:
    number = float(text)
    return number if math.isfinite(number) else None  # 1e999 reads as null, not inf


_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)  # one, reused
_ENCODER = json.JSONEncoder(ensure_ascii=False)


def loads(data: bytes | str) -> Any:
    """The engine's JSON, or None when it is not JSON (never raises). Non-finite numbers read
    as null, so nothing translated can carry one on to a client."""
    try:
        text = data.decode() if isinstance(data, bytes | bytearray) else data
        return _DECODER.decode(text)
    except (ValueError, RecursionError, TypeError, AttributeError):
        return None  # UnicodeDecodeError and an int past 4300 digits are ValueErrors


def _error_text(error: Any) -> str:
    """The engine's error message for the client, without the Python traceback llama-cpp-python
    appends to it (``... \n\n  File "/.../app.py", line 376, ...``), and not endless."""
    if isinstance(error, dict):
        error = error.get("message")
    if not isinstance(error, str) or not error.strip():
        return "the engine reported an error"
    text = error.split('\n  File "', 1)[0].strip()
    return (text or "the engine reported an error")[:_MAX_ERROR]


def _done_reason(finish: Any) -> str:
    return "length" if finish == "length" else "stop"


def _tool_calls(calls: Any) -> list[dict[str, Any]]:
    """OpenAI ``tool_calls`` (arguments a JSON string) as Ollama's (arguments an object)."""
    out = []
    for index, call in enumerate(calls if isinstance(calls, list) else ()):
        function = _dict(_dict(call).get("function"))
        name = function.get("name")
        if not isinstance(name, str) or not name:
            continue
        out.append(_ollama_call(_str(call.get("id")), index, name, function.get("arguments")))
    return out


def _ollama_call(call_id: str, index: int, name: str, arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, str):
        parsed = loads(arguments) if arguments.strip() else {}
        arguments = parsed
    call: dict[str, Any] = {"function": {"index": index, "name": name,
                                         "arguments": arguments if isinstance(arguments, dict)
                                         else {}}}
    if call_id:
        call["id"] = call_id
    return call


def _metrics(
    usage: dict[str, Any], timings: dict[str, Any], total_ns: int, first_token_ns: int | None,
    counted: int,
) -> dict[str, int]:
    """Ollama's counters; zero ones left out, as Ollama's ``omitempty`` does. llama.cpp's
    ``timings`` give exact prompt and generation times; without them the split is the measured
    time to the first token (streams), or the whole wall time counts as generation."""
    prompt_n = _count(usage.get("prompt_tokens")) or _count(timings.get("prompt_n"))
    eval_n = _count(usage.get("completion_tokens")) or _count(timings.get("predicted_n")) or counted
    prompt_ns = _ms_to_ns(timings.get("prompt_ms"))
    eval_ns = _ms_to_ns(timings.get("predicted_ms"))
    total_ns = max(0, total_ns)
    if not (prompt_ns or eval_ns):
        if first_token_ns is not None:
            prompt_ns = max(0, min(first_token_ns, total_ns))
            eval_ns = total_ns - prompt_ns
        else:
            eval_ns = total_ns
    total_ns = max(total_ns, prompt_ns + eval_ns)
    out = {"total_duration": total_ns, "prompt_eval_count": prompt_n,
           "prompt_eval_duration": prompt_ns, "eval_count": eval_n, "eval_duration": eval_ns}
    return {key: value for key, value in out.items() if value}


def _normalised(vector: Any) -> list[float] | None:
    """An embedding as a list of finite floats, L2-normalised (Ollama's ``/api/embed`` vectors
    are), or None when the engine's vector is not one."""
    if not isinstance(vector, list) or not vector:
        return None
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in vector):
        return None
    try:
        floats = [float(x) for x in vector]
        norm = math.sqrt(math.fsum(x * x for x in floats))
    except OverflowError:
        return None
    if not math.isfinite(norm):
        return None
    return [x / norm for x in floats] if norm > 0 else floats


def _vectors(answer: dict[str, Any]) -> list[Any]:
    data = answer.get("data")
    items = [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []
    items.sort(key=lambda d: _count(d.get("index")))
    return [d.get("embedding") for d in items]


def from_openai(
    path: str, answer: Any, model: str, started_ns: int, *,
    now_ns: int | None = None, clock: Callable[[], int] = time.monotonic_ns,
) -> dict[str, Any]:
    """The Ollama body for ``path`` from an engine's whole (non-streamed) ``answer``.
    ``started_ns`` is when the request went upstream, on ``clock`` (monotonic by default);
    ``model`` is the name the client asked for, echoed as Ollama does. An engine error
    (``{"error": ...}``) or a body that is no answer gives ``{"error": "..."}``."""
    if not isinstance(answer, dict):
        return {"error": "the engine's answer was not a JSON object"}
    if answer.get("error"):
        return {"error": _error_text(answer["error"])}
    total_ns = (clock() if now_ns is None else now_ns) - started_ns
    usage = _dict(answer.get("usage"))
    if path in (EMBED, EMBEDDINGS):
        vectors = _vectors(answer)
        if path == EMBEDDINGS:
            first = vectors[0] if vectors else None
            ok = isinstance(first, list) and all(
                isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
                for x in first)
            return {"embedding": [float(x) for x in first] if ok else []}
        embeddings = [v for v in (_normalised(v) for v in vectors) if v is not None]
        out: dict[str, Any] = {"model": model, "embeddings": embeddings}
        if total_ns > 0:
            out["total_duration"] = min(total_ns, _MAX_COUNT)
        if _count(usage.get("prompt_tokens")):
            out["prompt_eval_count"] = _count(usage.get("prompt_tokens"))
        return out
    choices = answer.get("choices")
    choice = _dict(choices[0]) if isinstance(choices, list) and choices else {}
    message = _dict(choice.get("message"))
    text = _str(message.get("content")) if message else _str(choice.get("text"))
    thinking = _str(message.get("reasoning_content")) or _str(message.get("reasoning"))
    calls = _tool_calls(message.get("tool_calls"))
    out = ollama_chunk(path, model, text, thinking, calls)
    out["done"] = True
    out["done_reason"] = _done_reason(choice.get("finish_reason"))
    out.update(_metrics(usage, _dict(answer.get("timings")), total_ns, None, 0))
    return out


def ollama_chunk(path: str, model: str, content: str, thinking: str = "",
                 calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One Ollama answer object, not yet done: ``message`` for /api/chat, ``response`` for
    /api/generate, with thinking and tool calls where there are some."""
    out: dict[str, Any] = {"model": model, "created_at": created_at()}
    where: dict[str, Any] = out
    if path == CHAT:
        where = out["message"] = {"role": "assistant", "content": content}
    else:
        out["response"] = content
    if thinking:
        where["thinking"] = thinking
    if calls:
        where["tool_calls"] = calls
    out["done"] = False
    return out


# --- streams: SSE -> NDJSON ---------------------------------------------------------------------


class SseToNdjson:
    """One streamed answer from an engine (SSE) as Ollama's NDJSON stream.

    ``frame(data)`` takes SSE bytes as they come, one event or any slice of the stream (a partial
    event is kept until its blank line arrives), and returns the NDJSON lines to send now, maybe
    none. ``end()`` returns the final ``done: true`` line with done_reason and counts, or an
    ``{"error": ...}`` line when the engine stopped before it finished. ``whole(body)`` translates
    a non-streamed answer. Tool calls, which engines send in fragments, are sent whole in one
    ``done: false`` line when the engine says it has finished, as Ollama does."""

    def __init__(
        self, path: str, model: str, started_ns: int, *,
        clock: Callable[[], int] = time.monotonic_ns, max_event: int = 16 * 2**20,
    ) -> None:
        self.path = path
        self.model = model
        self.started_ns = started_ns
        self.clock = clock
        self.max_event = max_event
        self.pending = b""
        self.usage: dict[str, Any] = {}
        self.timings: dict[str, Any] = {}
        self.finish: Any = None
        self.counted = 0  # content deltas seen: eval_count when the engine sends no usage
        self.first_token_ns: int | None = None
        self.calls: dict[int, dict[str, str]] = {}  # by index: id, name, arguments so far
        self.done = False  # [DONE] seen
        self.closed = False  # an error line or the final line went out: nothing more is sent

    # each NDJSON line
    def _line(self, body: dict[str, Any]) -> bytes:
        return _ENCODER.encode(body).encode() + b"\n"

    def _chunk(self, content: str = "", thinking: str = "",
               calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return ollama_chunk(self.path, self.model, content, thinking, calls)

    def frame(self, data: bytes) -> bytes:
        if self.closed or not data:
            return b""
        buffer = self.pending + data
        hold = buffer.endswith(b"\r")  # maybe half of a CRLF: wait for the rest
        if hold:
            buffer = buffer[:-1]
        events = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n\n")
        rest = events.pop()
        self.pending = rest + (b"\r" if hold else b"")
        out = b"".join(self._event(event) for event in events)
        if len(self.pending) > self.max_event and not self.closed:
            self.closed = True
            self.pending = b""
            out += self._line({"error": "the engine sent an event larger than "
                                        f"{self.max_event} bytes"})
        return out

    def _event(self, event: bytes) -> bytes:
        if self.closed or self.done:
            return b""
        data: list[bytes] = []
        error: list[bytes] = []
        for line in event.split(b"\n"):
            if not line or line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if name == b"data":
                data.append(value)
            elif name == b"error":  # llama.cpp's server writes "error: {...}" for a failure
                error.append(value)
        if error:
            body = loads(b"\n".join(error))
            self.closed = True
            return self._line({"error": _error_text(_dict(body).get("error", body)
                                                     if isinstance(body, dict) else body)})
        if not data:
            return b""
        payload = b"\n".join(data)
        if payload.strip() == b"[DONE]":
            self.done = True
            return self._finish_calls()  # end() sends the final line
        return self._chunk_event(loads(payload))

    def _chunk_event(self, body: Any) -> bytes:
        if not isinstance(body, dict):
            return b""
        if body.get("error"):
            self.closed = True
            return self._line({"error": _error_text(body["error"])})
        if isinstance(body.get("usage"), dict):
            self.usage = body["usage"]
        if isinstance(body.get("timings"), dict):
            self.timings = body["timings"]
        choices = body.get("choices")
        choice = _dict(choices[0]) if isinstance(choices, list) and choices else {}
        if not choice:
            return b""  # a usage-only chunk
        delta = _dict(choice.get("delta")) if "delta" in choice else {}
        content = _str(delta.get("content")) if delta else _str(choice.get("text"))
        thinking = _str(delta.get("reasoning_content")) or _str(delta.get("reasoning"))
        self._gather_calls(delta.get("tool_calls"))
        out = b""
        if content or thinking:
            if self.first_token_ns is None:
                self.first_token_ns = self.clock()
            self.counted += 1
            out = self._line(self._chunk(content, thinking))
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]
            out += self._finish_calls()
        return out

    def _gather_calls(self, deltas: Any) -> None:
        for position, delta in enumerate(deltas if isinstance(deltas, list) else ()):
            if not isinstance(delta, dict):
                continue
            index = delta.get("index")
            index = index if _is_int(index) and 0 <= index < 1024 else position
            call = self.calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
            if isinstance(delta.get("id"), str) and not call["id"]:
                call["id"] = delta["id"]
            function = _dict(delta.get("function"))
            if isinstance(function.get("name"), str):
                call["name"] = call["name"] or function["name"]
            if isinstance(function.get("arguments"), str):
                call["arguments"] += function["arguments"]
            elif isinstance(function.get("arguments"), dict):  # a whole object, not a fragment
                call["arguments"] = json.dumps(function["arguments"])
        if self.first_token_ns is None and self.calls:
            self.first_token_ns = self.clock()

    def _finish_calls(self) -> bytes:
        calls = [_ollama_call(c["id"], n, c["name"], c["arguments"])
                 for n, c in enumerate(self.calls[i] for i in sorted(self.calls)) if c["name"]]
        self.calls = {}
        return self._line(self._chunk(calls=calls)) if calls else b""

    def end(self) -> bytes:
        """The last line: ``done: true`` with done_reason and counts, or an error line when the
        engine stopped without saying it had finished. Nothing after an error line."""
        out = b""
        if self.pending and not self.closed:  # a last event without its blank line
            pending, self.pending = self.pending, b""
            out = self._event(pending.replace(b"\r\n", b"\n").replace(b"\r", b"\n"))
        if self.closed:
            return out
        out += self._finish_calls()
        self.closed = True
        if self.finish is None and not self.done:
            return out + self._line({"error": "the engine ended the stream before it finished"})
        final = self._chunk()
        final["done"] = True
        final["done_reason"] = _done_reason(self.finish)
        first = None if self.first_token_ns is None else self.first_token_ns - self.started_ns
        final.update(_metrics(self.usage, self.timings, self.clock() - self.started_ns, first,
                              self.counted))
        return out + self._line(final)

    def whole(self, answer: bytes) -> bytes:
        """A non-streamed answer's bytes as the Ollama body (one JSON object, no newline)."""
        body = from_openai(self.path, loads(answer), self.model, self.started_ns,
                           clock=self.clock)
        return _ENCODER.encode(body).encode()
