"""The inference routes the client APIs share, and how each request's body is read: the model,
whether it streams, the options routing weighs (``num_ctx``, ``num_predict``), fallbacks, tags and
a cheap size estimate. Both backends that serve these APIs parse with it, so a request means the
same whichever of them answers it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
from aiohttp import web

from herd_kernel.models import RouteRequest
from herd_kernel.pipeline import new_request_id
from herd_kernel.wire import BadRequest, client_request_id, request_tags


def quoted_not_found(model: str) -> str:
    return f"model '{model}' not found"


def embed_not_found(model: str) -> str:
    return f'model "{model}" not found, try pulling it first'


@attrs.frozen(kw_only=True)
class Front:
    """One inference route as clients call it."""

    path: str
    api: str  # its dialect
    stream_default: bool
    not_found: Callable[[str], str] = quoted_not_found
    empty_model_status: int = 400  # Ollama's /api/generate answers a missing model with 404
    relayed_as_is: bool = False  # Responses and Messages: relayed unshaped

    def parse(self, request: web.Request, body: dict[str, Any]) -> RouteRequest:
        """The few facts routing needs from a parsed body, checked as Ollama checks them: a
        ``BadRequest`` in the API's own words for a wrong type, never arithmetic on garbage."""
        model = body.get("model")
        if model is None or model == "":
            if self.empty_model_status == 404:
                raise BadRequest(self.not_found(""), 404)
            raise BadRequest("model is required")
        if not isinstance(model, str):
            raise BadRequest(f"invalid value for 'model': expected a string, got {_kind(model)}")
        stream = body.get("stream", self.stream_default)
        if stream is None:
            stream = self.stream_default
        if not isinstance(stream, bool):
            raise BadRequest(f"invalid value for 'stream': expected a boolean, got {_kind(stream)}")
        options = body.get("options")
        num_ctx = None
        if options is not None:
            if not isinstance(options, dict):
                raise BadRequest(f"invalid value for 'options': expected an object, got {_kind(options)}")
            num_ctx = _option_int(options, "num_ctx")
        num_predict = _option_int(options, "num_predict") if isinstance(options, dict) else None
        if self.api == "openai":
            key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
            num_predict = _option_int(body, key, f"invalid value for '{key}'")
        if self.relayed_as_is:
            num_predict = None  # Responses and Messages bodies are relayed as they are, unshaped
        fallbacks = body.get("fallback_models", ())
        if fallbacks is None:
            fallbacks = ()
        if not isinstance(fallbacks, list | tuple) or not all(
            isinstance(m, str) and m for m in fallbacks
        ):
            raise BadRequest("invalid value for 'fallback_models': expected a list of model names")
        return RouteRequest(
            model=model,
            api=self.api,
            path=self.path,
            stream=stream,
            num_ctx=num_ctx,
            num_predict=num_predict,
            estimated_tokens=estimate_tokens(body),
            fallback_models=tuple(fallbacks),
            tags=request_tags(request, body),
            request_id=client_request_id(request) or new_request_id(),
        )


def is_load(path: str, body: dict[str, Any]) -> bool:
    """Nothing to infer: Ollama loads a model (or, with ``keep_alive: 0``, unloads it) on a
    generate with no prompt or a chat with no messages, and answers an embed of no input with no
    vectors (``""``, missing or ``[]``; the legacy route: an empty ``prompt``)."""
    if path == "/api/generate":
        return not body.get("prompt") and not body.get("images")
    if path == "/api/embed":
        return body.get("input") in (None, "", [])
    if path == "/api/embeddings":
        return not body.get("prompt")
    return path == "/api/chat" and not body.get("messages")


def load_answer(path: str, model: str, body: dict[str, Any]) -> web.Response:
    """Ollama's answer when there is nothing to infer (``is_load``), for engines that keep their
    one model loaded (an OpenAI-compatible server): there is nothing to send them."""
    from datetime import UTC, datetime

    if path == "/api/embed":
        return web.json_response({"model": model, "embeddings": []})
    if path == "/api/embeddings":
        return web.json_response({"embedding": []})
    reason = "unload" if body.get("keep_alive") in (0, "0", "0s") else "load"
    answer: dict[str, Any] = {
        "model": model, "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "done": True, "done_reason": reason}
    if path == "/api/chat":
        answer["message"] = {"role": "assistant", "content": ""}
    else:
        answer["response"] = ""
    return web.json_response(answer)


_EPOCH = "1970-01-01T00:00:00Z"


def show_from_listing(key: str, node: Any) -> web.Response:
    """Ollama's ``/api/show`` for a model an engine without one serves (an OpenAI-compatible
    server): what its endpoint reported, with no Modelfile, template or weights metadata to show,
    said in ``X-Fleet-Described``."""
    listed = node.available.get(key) or node.loaded.get(key)
    loaded = node.loaded.get(key)
    endpoint = node.serving[key]
    # what it runs with, else what it was trained for
    context = (loaded.context_length if loaded is not None else 0) or \
        (listed.context_length if listed is not None else 0)
    body: dict[str, Any] = {
        "license": "", "modelfile": "", "parameters": "", "template": "",
        "details": {"parent_model": "", "format": "", "family": "", "families": None,
                    "parameter_size": "", "quantization_level": ""},
        "model_info": {"general.context_length": context} if context else {},
        "capabilities": list(getattr(listed, "capabilities", ()) or ("completion",)),
        "modified_at": getattr(listed, "modified_at", None) or _EPOCH}
    return web.json_response(body, headers={
        "X-Fleet-Node": node.node_id,
        "X-Fleet-Described": f"from the {endpoint.engine or endpoint.kind} endpoint's listing"})


#: every inference route, as Ollama serves it (Responses since 0.13.3, Messages since 0.14.0)
FRONTS = {f.path: f for f in (
    Front(path="/api/chat", api="ollama", stream_default=True),
    Front(path="/api/generate", api="ollama", stream_default=True, empty_model_status=404),
    Front(path="/api/embed", api="ollama", stream_default=False, not_found=embed_not_found),
    Front(path="/api/embeddings", api="ollama", stream_default=False, not_found=embed_not_found),
    Front(path="/v1/chat/completions", api="openai", stream_default=False),
    Front(path="/v1/completions", api="openai", stream_default=False),
    Front(path="/v1/embeddings", api="openai", stream_default=False, not_found=embed_not_found),
    Front(path="/v1/responses", api="openai", stream_default=False, relayed_as_is=True),
    Front(path="/v1/messages", api="anthropic", stream_default=False, relayed_as_is=True),
)}


_INT32 = 2**31


def _option_int(where: dict[str, Any], key: str, problem: str | None = None) -> int | None:
    """An integer option as Ollama reads it (a JSON number, truncated), or None when absent.
    Booleans, strings and numbers outside a 32-bit int are a 400, never arithmetic on garbage."""
    value = where.get(key)
    if value is None:
        return None
    problem = problem or f'option "{key}" must be of type integer'
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(problem)
    if not -_INT32 <= value < _INT32:
        raise BadRequest(f"{problem}: {value:.6g} is out of range")
    return int(value)


CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text with BPE tokenizers
TOKENS_PER_MESSAGE = 4  # role markers and separators added by chat templates
TOKENS_PER_IMAGE = 768  # a typical vision encoder's share of the context for one image


def estimate_tokens(body: dict[str, Any]) -> int:
    """A cheap prompt-size estimate (no tokenizer): characters / 4 plus template and image costs.

    Linear in the body, which was parsed anyway; used to judge context fit, never billed.
    """
    chars = 0
    images = 0
    tokens = 0
    for key in ("prompt", "system", "suffix", "input"):
        value = body.get(key)
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, list):
            chars += sum(len(v) for v in value if isinstance(v, str))
    if isinstance(body.get("images"), list):
        images += len(body["images"])
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            tokens += TOKENS_PER_MESSAGE
            content = message.get("content")
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):  # OpenAI content parts
                for part in content:
                    if isinstance(part, dict):
                        if isinstance(part.get("text"), str):
                            chars += len(part["text"])
                        elif part.get("type") in ("image_url", "input_audio"):
                            images += 1
            if isinstance(message.get("images"), list):
                images += len(message["images"])
    tools = body.get("tools")
    if isinstance(tools, list):
        chars += len(json.dumps(tools))
    return tokens + chars // CHARS_PER_TOKEN + images * TOKENS_PER_IMAGE


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", str: "string", list: "array", dict: "object"}.get(type(value), "number")
