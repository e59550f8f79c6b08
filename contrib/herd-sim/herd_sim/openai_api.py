"""Ollama's OpenAI-compatible routes (``/v1/*``) for one simulated node.

Like Ollama's ``middleware/openai.go`` these translate the OpenAI body into a native one, run
it through the same checks and engine as ``/api/chat``/``/api/generate``/``/api/embed``, and
translate the result (and errors, into ``{"error": {"message", "type", "param", "code"}}``).
"""

from __future__ import annotations

import json
import random
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from herd_sim.engine import Job, LoadOnly, find_model, prepare_chat, prepare_generate, run_job
from herd_sim.faults import Reply
from herd_sim.native import embed_texts
from herd_sim.text import embedding_b64
from herd_sim.wire import SSE_TYPE, ApiError, go_json, parse_body

if TYPE_CHECKING:
    from herd_sim.node import SimNode

__all__ = ["openai_error", "openai_routes"]

_FINGERPRINT = "fp_ollama"
_EFFORT = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high",
           "max": "max", "xhigh": "max", "ultra": "max"}


def openai_error(status: int, message: str) -> dict[str, Any]:
    """The OpenAI error object Ollama answers /v1 requests with (status kept)."""
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _node(request: web.Request) -> SimNode:
    from herd_sim.node import NODE_KEY

    return request.app[NODE_KEY]


async def _fail(reply: Reply, err: ApiError) -> web.StreamResponse:
    if reply.started:
        # Ollama loses the text here; emitting an OpenAI error event is what clients understand
        await reply.event(openai_error(err.status, err.message))
        return await reply.finish()
    return await reply.json(openai_error(err.status, err.message), status=err.status)


# --- request translation -------------------------------------------------------------------------


def _image_from_url(url: Any) -> str:
    if isinstance(url, dict):
        url = url.get("url")
    if not isinstance(url, str):
        raise ApiError(400, "invalid image input")
    if url.startswith(("http://", "https://")):
        raise ApiError(400, "image URLs are not currently supported, please use base64 encoded "
                            "data instead")
    for prefix in ("data:image/png;base64,", "data:image/jpeg;base64,",
                   "data:image/jpg;base64,", "data:image/webp;base64,", "data:;base64,"):
        if url.startswith(prefix):
            return url[len(prefix):]
    raise ApiError(400, "invalid image input")


def _native_messages(messages: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict):
            raise ApiError(400, "invalid message format")
        role = message.get("role") or ""
        content = message.get("content")
        native_calls = []
        for call in message.get("tool_calls") or []:
            if not isinstance(call, dict):
                raise ApiError(400, "invalid tool call")
            function = call.get("function") or {}
            arguments = function.get("arguments") or "{}"
            try:
                parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
            except json.JSONDecodeError:
                raise ApiError(400, "invalid tool call arguments") from None
            if not isinstance(parsed, dict):
                raise ApiError(400, "invalid tool call arguments")
            native_calls.append({"id": call.get("id"),
                                 "function": {"name": function.get("name"), "arguments": parsed}})
        base: dict[str, Any] = {"role": role}
        if message.get("tool_call_id"):
            base["tool_call_id"] = message["tool_call_id"]
        if content is None or isinstance(content, str):
            out.append({**base, "content": content or "", "tool_calls": native_calls})
            continue
        if not isinstance(content, list):
            raise ApiError(400, "invalid message content type: " + type(content).__name__)
        # every content part becomes its own native message, as Ollama does
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                out.append({**base, "content": part.get("text") or ""})
            elif kind == "image_url":
                out.append({**base, "content": "", "images": [_image_from_url(part.get("image_url"))]})
            elif kind == "input_audio":
                audio = (part.get("input_audio") or {}).get("data")
                if not isinstance(audio, str):
                    raise ApiError(400, "invalid audio input")
                out.append({**base, "content": "", "images": [audio]})
            else:
                raise ApiError(400, f"invalid message content type: {kind}")
        if native_calls:
            out[-1]["tool_calls"] = native_calls
    return out


def _native_options(body: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    if body.get("seed") is not None:
        options["seed"] = body["seed"]
    stop = body.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list):
        options["stop"] = stop
    # the OpenAI defaults differ from Ollama's native ones
    options["temperature"] = body.get("temperature", 1.0)
    top_p = body.get("top_p") or 1.0
    options["top_p"] = top_p
    for key in ("frequency_penalty", "presence_penalty"):
        if body.get(key) is not None:
            options[key] = body[key]
    return options


def _native_format(response_format: Any) -> Any:
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) else None
    return None


def _native_think(body: dict[str, Any]) -> Any:
    effort = body.get("reasoning_effort")
    reasoning = body.get("reasoning")
    if effort is None and isinstance(reasoning, dict):
        effort = reasoning.get("effort")
    if effort is None:
        return None
    if effort not in _EFFORT:
        raise ApiError(400, f"invalid reasoning value: '{effort}' (must be \"none\", \"minimal\", "
                            '"low", "medium", "high", "xhigh" or "max")')
    return _EFFORT[effort]


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def _usage(metrics: dict[str, Any]) -> dict[str, int]:
    prompt = metrics.get("prompt_eval_count", 0)
    completion = metrics.get("eval_count", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _openai_call(call: dict[str, Any], index: int) -> dict[str, Any]:
    return {"id": call["id"], "index": index, "type": "function",
            "function": {"name": call["name"], "arguments": go_json(call["arguments"])}}


def _finish_reason(done_reason: str, has_calls: bool) -> str:
    if done_reason == "length":
        return "length"
    return "tool_calls" if has_calls else "stop"


# --- chat completions ----------------------------------------------------------------------------


async def chat_completions(request: web.Request) -> web.StreamResponse:
    node = _node(request)
    reply = node.reply(request)
    try:
        body = parse_body(await request.read(), "ChatCompletionRequest", empty_message="EOF")
        messages = body.get("messages") or []
        if not messages:
            raise ApiError(400, "[] is too short - 'messages'")
        native: dict[str, Any] = {
            "model": body.get("model") or "",
            "messages": _native_messages(messages),
            "options": _native_options(body),
            "format": _native_format(body.get("response_format")),
            "tools": body.get("tools"),
            "think": _native_think(body),
        }
        job = prepare_chat(node, {k: v for k, v in native.items() if v is not None}, request.path)
        assert not isinstance(job, LoadOnly)  # messages are never empty here
        if body.get("stream"):
            return await _chat_stream(node, reply, job, _include_usage(body))
        return await _chat_once(node, reply, job)
    except ApiError as err:
        return await _fail(reply, err)


def _ids(prefix: str) -> tuple[str, int]:
    # Ollama: "chatcmpl-" + rand.Intn(999), fixed for the whole stream
    return f"{prefix}-{random.randrange(999)}", int(time.time())


async def _chat_once(node: SimNode, reply: Reply, job: Job) -> web.StreamResponse:
    async def ignore(_kind: str, _value: Any) -> None:
        return None

    plan, metrics = await run_job(node, job, ignore)
    ident, created = _ids("chatcmpl")
    message: dict[str, Any] = {"role": "assistant", "content": plan.content}
    if plan.thinking:
        message["reasoning"] = plan.thinking
    calls = plan.tool_calls
    if calls:
        message["tool_calls"] = [_openai_call(c, i) for i, c in enumerate(calls)]
    return await reply.json({
        "id": ident, "object": "chat.completion", "created": created, "model": job.name,
        "system_fingerprint": _FINGERPRINT,
        "choices": [{"index": 0, "message": message,
                     "finish_reason": _finish_reason(plan.done_reason, bool(calls))}],
        "usage": _usage(metrics),
    })


async def _chat_stream(node: SimNode, reply: Reply, job: Job, include_usage: bool) -> web.StreamResponse:
    ident, created = _ids("chatcmpl")
    head = {"id": ident, "object": "chat.completion.chunk", "created": created,
            "model": job.name, "system_fingerprint": _FINGERPRINT}
    calls: list[dict[str, Any]] = []

    async def chunk(delta: dict[str, Any], finish: str | None) -> None:
        await reply.event({**head, "choices": [{"index": 0, "delta": delta,
                                                "finish_reason": finish}]})

    async def emit(kind: str, value: Any) -> None:
        if not reply.started:
            await reply.start(SSE_TYPE)
            delta: dict[str, Any] = {"role": "assistant"}
        else:
            delta = {}
        delta["content"] = value if kind == "content" else ""
        if kind == "thinking":
            delta["reasoning"] = value
        elif kind == "tool_call":
            calls.append(value)
            delta["tool_calls"] = [_openai_call(value, len(calls) - 1)]
        await chunk(delta, None)

    plan, metrics = await run_job(node, job, emit)
    if not reply.started:
        await reply.start(SSE_TYPE)
    await chunk({}, _finish_reason(plan.done_reason, bool(calls)))
    if include_usage:
        await reply.event({**head, "choices": [], "usage": _usage(metrics)})
    await reply.event("[DONE]")
    return await reply.finish()


# --- legacy completions --------------------------------------------------------------------------


async def completions(request: web.Request) -> web.StreamResponse:
    node = _node(request)
    reply = node.reply(request)
    try:
        body = parse_body(await request.read(), "CompletionRequest", empty_message="EOF")
        native = {"model": body.get("model") or "", "prompt": body.get("prompt") or "",
                  "suffix": body.get("suffix"), "options": _native_options(body)}
        job = prepare_generate(node, {k: v for k, v in native.items() if v is not None},
                               request.path)
        if isinstance(job, LoadOnly):
            raise ApiError(400, "prompt is required")
        ident, created = _ids("cmpl")
        head = {"id": ident, "object": "text_completion", "created": created, "model": job.name,
                "system_fingerprint": _FINGERPRINT}
        stream = bool(body.get("stream"))
        include_usage = _include_usage(body)
        zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}

        async def emit(kind: str, value: Any) -> None:
            if not stream or kind != "content":
                return  # completions carry no reasoning text
            if not reply.started:
                await reply.start(SSE_TYPE)
            event: dict[str, Any] = {**head, "choices": [{"text": value, "index": 0,
                                                          "finish_reason": None}]}
            if include_usage:
                event["usage"] = zero
            await reply.event(event)

        plan, metrics = await run_job(node, job, emit)
        finish = "length" if plan.done_reason == "length" else "stop"
        if not stream:
            return await reply.json({**head, "choices": [{"text": plan.content, "index": 0,
                                                          "finish_reason": finish}],
                                     "usage": _usage(metrics)})
        if not reply.started:
            await reply.start(SSE_TYPE)
        last: dict[str, Any] = {**head, "choices": [{"text": "", "index": 0,
                                                     "finish_reason": finish}]}
        if include_usage:
            last["usage"] = zero
        await reply.event(last)
        if include_usage:
            await reply.event({**head, "choices": [], "usage": _usage(metrics)})
        await reply.event("[DONE]")
        return await reply.finish()
    except ApiError as err:
        return await _fail(reply, err)


# --- embeddings and models -----------------------------------------------------------------------


async def embeddings(request: web.Request) -> web.StreamResponse:
    node = _node(request)
    reply = node.reply(request)
    try:
        body = parse_body(await request.read(), "EmbedRequest_openai", empty_message="EOF")
        value = body.get("input")
        if isinstance(value, str):
            inputs = [value]  # "" is embedded as [""]
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            inputs = list(value)
        else:
            raise ApiError(400, "invalid input")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise ApiError(400, f"Invalid value for 'encoding_format' = {encoding}. "
                                "Supported values: ['float', 'base64'].")
        native = {"model": body.get("model") or "", "dimensions": body.get("dimensions")}
        _spec, vectors, metrics = await embed_texts(node, native, request.path, inputs)
    except ApiError as err:
        return await _fail(reply, err)
    data = [{"object": "embedding",
             "embedding": embedding_b64(v) if encoding == "base64" else v, "index": i}
            for i, v in enumerate(vectors)]
    tokens = metrics.get("prompt_eval_count", 0)
    return await reply.json({"object": "list", "data": data, "model": body.get("model"),
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _model_object(ident: str, modified_at: float) -> dict[str, Any]:
    return {"id": ident, "object": "model", "created": int(modified_at), "owned_by": "library"}


async def list_models(request: web.Request) -> web.StreamResponse:
    node = _node(request)
    entries = sorted(node.disk.values(), key=lambda d: d.modified_at, reverse=True)
    return await node.reply(request).json(
        {"object": "list", "data": [_model_object(d.spec.name, d.modified_at) for d in entries]})


async def retrieve_model(request: web.Request) -> web.StreamResponse:
    node = _node(request)
    reply = node.reply(request)
    ident = request.match_info["model"]
    try:
        spec = find_model(node, ident)
    except ApiError as err:
        return await _fail(reply, err)
    return await reply.json(_model_object(ident, node.disk[spec.name].modified_at))


def openai_routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/chat/completions", chat_completions),
        web.post("/v1/completions", completions),
        web.post("/v1/embeddings", embeddings),
        web.get("/v1/models", list_models, allow_head=False),
        web.get("/v1/models/{model:.*}", retrieve_model, allow_head=False),
    ]
