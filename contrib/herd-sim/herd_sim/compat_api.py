"""Ollama's ``/v1/responses`` (OpenAI Responses, Ollama 0.13.3) and ``/v1/messages`` (Anthropic
Messages, Ollama 0.14.0) for one simulated node: minimal, faithful shapes. A node whose
profile's ``version`` is older answers 404, as that Ollama would.

Like Ollama's middleware, each translates its body into a native chat, runs it through the same
checks and engine as ``/api/chat`` and translates the answer back: a Responses object or an
Anthropic message, or their SSE streams (``event:`` + ``data:`` lines). Errors are OpenAI's
object on ``/v1/responses`` and ``{"type": "error", "error": {...}, "request_id"}`` on
``/v1/messages``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from aiohttp import web

from herd_sim.engine import LoadOnly, prepare_chat, run_job
from herd_sim.faults import Reply
from herd_sim.openai_api import _node, openai_error
from herd_sim.wire import SSE_TYPE, ApiError, go_json, parse_body

__all__ = ["anthropic_error", "compat_routes"]

_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                    403: "permission_error", 404: "not_found_error", 429: "rate_limit_error",
                    503: "overloaded_error", 529: "overloaded_error"}


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    return {"type": "error",
            "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message},
            "request_id": f"req_{os.urandom(12).hex()}"}


def _text(content: Any) -> str:
    """The text of a string or a list of typed parts (input_text, output_text, text)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _too_old(request: web.Request, since: tuple[int, ...]) -> web.Response | None:
    """An Ollama older than the route has no such path: gin's plain 404."""
    try:
        have = tuple(int(x) for x in _node(request).profile.version.split(".")[:3])
    except ValueError:
        return None
    if have < since:
        return web.Response(status=404, text="404 page not found", content_type="text/plain")
    return None


async def _sse(reply: Reply, event: str, data: dict[str, Any]) -> None:
    if not reply.started:
        await reply.start(SSE_TYPE)
    await reply.raw(f"event: {event}\ndata: {go_json({'type': event, **data})}\n\n".encode())


def _job(request: web.Request, messages: list[dict[str, Any]], body: dict[str, Any],
         max_tokens: Any) -> Any:
    node = _node(request)
    native: dict[str, Any] = {"model": body.get("model") or "", "messages": messages}
    if isinstance(max_tokens, int) and max_tokens > 0:
        native["options"] = {"num_predict": max_tokens}
    job = prepare_chat(node, native, request.path)
    assert not isinstance(job, LoadOnly)
    return node, job


# --- /v1/responses ------------------------------------------------------------------------------


async def responses(request: web.Request) -> web.StreamResponse:
    if (old := _too_old(request, (0, 13, 3))) is not None:
        return old
    reply = _node(request).reply(request)
    try:
        body = parse_body(await request.read(), "ResponsesRequest", empty_message="EOF")
        items = body.get("input")
        messages = [{"role": "system", "content": body["instructions"]}] \
            if isinstance(body.get("instructions"), str) else []
        if isinstance(items, str):
            messages.append({"role": "user", "content": items})
        elif isinstance(items, list):
            messages += [{"role": i.get("role", "user"), "content": _text(i.get("content"))}
                         for i in items if isinstance(i, dict)]
        if not messages:
            raise ApiError(400, "input is required")
        node, job = _job(request, messages, body, body.get("max_output_tokens"))
        ident = f"resp_{os.urandom(6).hex()}"
        head = {"id": ident, "object": "response", "created_at": int(time.time()),
                "model": job.name}
        item = f"msg_{os.urandom(6).hex()}"
        if body.get("stream"):
            await _sse(reply, "response.created",
                       {"response": {**head, "status": "in_progress", "output": []}})

            async def emit(kind: str, value: Any) -> None:
                if kind == "content":
                    await _sse(reply, "response.output_text.delta",
                               {"item_id": item, "output_index": 0, "content_index": 0,
                                "delta": value})
        else:
            async def emit(kind: str, value: Any) -> None:
                return None

        plan, metrics = await run_job(node, job, emit)
        done = {**head, "status": "completed", "output": [{
            "id": item, "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": plan.content, "annotations": []}]}],
            "usage": _responses_usage(metrics)}
        if body.get("stream"):
            await _sse(reply, "response.completed", {"response": done})
            return await reply.finish()
        return await reply.json(done)
    except ApiError as err:
        if reply.started:
            await _sse(reply, "error", {"message": err.message})
            return await reply.finish()
        return await reply.json(openai_error(err.status, err.message), status=err.status)


def _responses_usage(metrics: dict[str, Any]) -> dict[str, int]:
    prompt, output = metrics.get("prompt_eval_count", 0), metrics.get("eval_count", 0)
    return {"input_tokens": prompt, "output_tokens": output, "total_tokens": prompt + output}


# --- /v1/messages -------------------------------------------------------------------------------


async def messages(request: web.Request) -> web.StreamResponse:
    if (old := _too_old(request, (0, 14, 0))) is not None:
        return old
    reply = _node(request).reply(request)
    try:
        body = parse_body(await request.read(), "MessagesRequest", empty_message="EOF")
        if not body.get("model"):
            raise ApiError(400, "model is required")
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens <= 0:
            raise ApiError(400, "max_tokens is required and must be positive")
        if not body.get("messages"):
            raise ApiError(400, "messages is required")
        chat = [{"role": "system", "content": _text(body["system"])}] if body.get("system") else []
        chat += [{"role": m.get("role", "user"), "content": _text(m.get("content"))}
                 for m in body["messages"] if isinstance(m, dict)]
        node, job = _job(request, chat, body, max_tokens)
        ident = f"msg_{os.urandom(12).hex()}"
        head = {"id": ident, "type": "message", "role": "assistant", "model": job.name}
        if body.get("stream"):
            await _sse(reply, "message_start", {"message": {
                **head, "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": job.prompt_tokens, "output_tokens": 0}}})
            await _sse(reply, "content_block_start",
                       {"index": 0, "content_block": {"type": "text", "text": ""}})

            async def emit(kind: str, value: Any) -> None:
                if kind == "content":
                    await _sse(reply, "content_block_delta",
                               {"index": 0, "delta": {"type": "text_delta", "text": value}})
        else:
            async def emit(kind: str, value: Any) -> None:
                return None

        plan, metrics = await run_job(node, job, emit)
        stop = "max_tokens" if plan.done_reason == "length" else "end_turn"
        usage = {"input_tokens": metrics.get("prompt_eval_count", 0),
                 "output_tokens": metrics.get("eval_count", 0)}
        if body.get("stream"):
            await _sse(reply, "content_block_stop", {"index": 0})
            await _sse(reply, "message_delta", {
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]}})
            await _sse(reply, "message_stop", {})
            return await reply.finish()
        return await reply.json({**head, "content": [{"type": "text", "text": plan.content}],
                                 "stop_reason": stop, "stop_sequence": None, "usage": usage})
    except ApiError as err:
        if reply.started:
            await _sse(reply, "error", {"error": anthropic_error(err.status, err.message)["error"]})
            return await reply.finish()
        return await reply.json(anthropic_error(err.status, err.message), status=err.status)


def compat_routes() -> list[web.RouteDef]:
    return [web.post("/v1/responses", responses), web.post("/v1/messages", messages)]
