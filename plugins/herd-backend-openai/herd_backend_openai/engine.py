"""Router side: how a routed request reaches an OpenAI-compatible engine. OpenAI requests go as
the client wrote them, with the model named as the engine listed it; Ollama requests are
translated (``translate``) and the engine's answer translated back, streamed or whole. Fields an
engine cannot take are named in ``X-Fleet-Dropped`` and in the trace."""

from __future__ import annotations

import json
import time
from typing import Any

import attrs
from herd_api_formats import OPENAI

from herd_backend_openai import translate
from herd_kernel.models import Endpoint, RouteRequest, normalize_model
from herd_kernel.pipeline import Outbound
from herd_kernel.wire import BadRequest, register_dialect

#: the routes these engines serve: their own, and Ollama's that ``translate`` maps onto them
NATIVE = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
TRANSLATED = translate.ROUTES
ROUTER_ONLY_FIELDS = ("fallback_models",)


#: an engine's SSE read line by line when it is translated: the translator gathers events itself,
#: so engines that end events with CRLF (sse-starlette's default) are read too
LINES = attrs.evolve(OPENAI, name="openai-lines", delimiter=b"\n")


class ToOllama:
    """An engine's answer in Ollama's shape, for one request (the pipeline's ``Translator``)."""

    def __init__(self, route: RouteRequest, model: str) -> None:
        self.stream = translate.SseToNdjson(route.path, model, time.monotonic_ns())
        self.content_type = "application/x-ndjson" if route.stream \
            else "application/json; charset=utf-8"

    def frame(self, frames: bytes) -> bytes:
        return self.stream.frame(frames)

    def end(self) -> bytes:
        return self.stream.end()

    def whole(self, body: bytes, status: int) -> bytes:
        if status < 400:
            return self.stream.whole(body)
        answer = translate.loads(body)
        error = answer.get("error", answer) if isinstance(answer, dict) else None
        message = translate._error_text(error) if error is not None else \
            body[:translate._MAX_ERROR].decode("utf-8", "replace").strip()
        return json.dumps({"error": message or f"the engine answered HTTP {status}"}).encode()


class OpenAIEngine:
    kind = "openai"

    def __init__(self) -> None:
        register_dialect(LINES)

    def refuses(self, route: RouteRequest) -> str | None:
        if route.path in NATIVE or route.path in TRANSLATED:
            return None
        return f"its OpenAI-compatible engine has no {route.path}"

    def outbound(
        self, route: RouteRequest, raw: bytes, body: dict[str, Any], decision: Any
    ) -> Outbound:
        endpoint: Endpoint = decision.endpoint
        name = listed_name(endpoint, decision.model_key) or decision.model
        # the engine matches names exactly: it gets the model as it listed it, and says so
        renamed = {"X-Fleet-Engine-Model": name} if name != body.get("model") else {}
        if route.path in NATIVE:
            if not renamed and not any(k in body for k in ROUTER_ONLY_FIELDS):
                return Outbound(body=raw, path=route.path, dialect="openai")
            sent = {k: v for k, v in body.items() if k not in ROUTER_ONLY_FIELDS}
            sent["model"] = name
            return Outbound(body=json.dumps(sent).encode(), path=route.path, dialect="openai",
                            headers=renamed,
                            summary=(lambda: {"engine_model": name}) if renamed else None)
        try:
            path, sent, dropped = translate.to_openai(route.path, body, name,
                                                      engine=endpoint.engine)
        except translate.TranslationError as exc:
            raise BadRequest(str(exc)) from None
        headers: dict[str, str] = {"X-Fleet-Translated": f"{route.path} -> {path}", **renamed}
        details: dict[str, Any] = {"translated": {"from": route.path, "to": path}}
        if renamed:
            details["engine_model"] = name
        dropped = [d for d in dropped if d not in ROUTER_ONLY_FIELDS]
        if dropped:
            headers["X-Fleet-Dropped"] = ",".join(dropped)
            details["dropped"] = dropped
        return Outbound(body=json.dumps(sent).encode(), path=path,
                        dialect="openai-lines" if route.stream else "openai",
                        translate=ToOllama(route, decision.model), headers=headers,
                        summary=lambda: details)

    async def warm(self, endpoint: Endpoint, model: str) -> str | None:
        return None  # these engines keep their models loaded: there is nothing to warm


def listed_name(endpoint: Endpoint, key: str) -> str | None:
    """The model's id exactly as the engine listed it (engines match names exactly)."""
    for model in (*endpoint.models_loaded, *endpoint.models_available):
        if normalize_model(model.name) == key:
            return model.name
    return None
