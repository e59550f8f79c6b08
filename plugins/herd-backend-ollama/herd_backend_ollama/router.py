"""Router side of the Ollama backend: the Ollama-native and OpenAI-compatible routes.

Inference routes parse the body once for the fields routing needs, then forward the client's own
bytes (rewritten only as the README's "What the router changes" table says, each change announced)
to the chosen node's Ollama, which serves both APIs itself, so every field survives. Load/unload
commands go to every node holding the model (``keepalive``). Listing routes answer from
the fleet registry without touching a node.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import attrs
from aiohttp import web

from herd_backend_ollama import keepalive, substitutes
from herd_backend_ollama.shaping import Shaper
from herd_kernel import __version__
from herd_kernel.api import RouteDef
from herd_kernel.models import AvailableModel, RouteRequest, normalize_model
from herd_kernel.pipeline import Outbound, new_request_id
from herd_kernel.wire import Api, BadRequest, error_response, read_json_object, request_tags

_EPOCH = "1970-01-01T00:00:00Z"


def _quoted_not_found(model: str) -> str:
    return f"model '{model}' not found"


def _embed_not_found(model: str) -> str:
    return f'model "{model}" not found, try pulling it first'


class InferenceRoute:
    """A POST route that is routed to one node: chat, generate, embeddings."""

    def __init__(
        self,
        services: Any,
        path: str,
        api: Api,
        *,
        stream_default: bool,
        not_found: Callable[[str], str],
        shaper: Shaper,
        keep_alive: keepalive.KeepAlive,
        empty_model_status: int = 400,
    ) -> None:
        self.services = services
        self.shaper = shaper
        self.keep_alive = keep_alive
        self.path = path
        self.api = api
        self.stream_default = stream_default
        self.not_found = not_found
        self.empty_model_status = empty_model_status

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            raw, body = await read_json_object(request, self.services.max_body)
            route = self.parse(request, body)
        except BadRequest as exc:
            return error_response(self.api, exc.status, exc.message)
        keep_alive = keepalive.keep_alive_seconds(body.get("keep_alive")) \
            if self.api == "ollama" else None
        command = keep_alive is not None and keepalive.is_command(self.path, body)
        if command:
            answered = await self.keep_alive.command(route, body, keep_alive)
            if answered is not None:
                return answered
        served, headers, notes = route, {}, {}
        if self.services.config["FLEET_AUTO_PULL"]:
            failure = await self._auto_pull(route, headers)
            if failure is not None:
                return failure
        if not command:
            served = self._substitute(route, headers, notes)

        def prepare(decision: Any) -> Outbound:
            outbound = self.shaper.outbound(route, raw, body, decision)
            if headers:
                outbound = attrs.evolve(outbound, headers={**headers, **outbound.headers})
            if notes:
                shaped = outbound.summary
                outbound = attrs.evolve(
                    outbound, summary=lambda: {**notes, **(shaped() if shaped else {})})
            return outbound

        response = await self.services.pipeline.proxy(
            request, served, prepare, upstream_path=self.path, not_found=self.not_found
        )
        node_id = response.headers.get("X-Fleet-Node")
        if node_id and response.status < 400:
            # the model is in that node's memory now (or, after keep_alive 0, no longer)
            served_key = normalize_model(response.headers.get("X-Fleet-Served-Model", served.model))
            keepalive.note(self.services, node_id, served_key, keep_alive)
            if keep_alive is not None and not command:
                self.keep_alive.spread(route, served_key, node_id, body["keep_alive"], keep_alive)
        return response

    def _substitute(
        self, route: RouteRequest, headers: dict[str, str], notes: dict[str, Any]
    ) -> RouteRequest:
        """Another model answers only by ``substitutes.larger_hot_sibling``'s rule: for a
        ``num_ctx`` the cold requested model would have to load with (context protection,
        ``strip``), or for any request with ``FLEET_VRAM_FALLBACK``. Always announced."""
        nodes = self.services.fleet.nodes.values()
        substitute, reason, header = None, "", ""
        if route.num_ctx and route.api == "ollama" and self.shaper.mode == "strip":
            substitute = substitutes.larger_hot_sibling(nodes, route.model,
                                                        min_context=route.num_ctx)
            reason, header = "context_upgrade", "X-Fleet-Context-Upgrade"
        if substitute is None and self.services.config["FLEET_VRAM_FALLBACK"]:
            substitute = substitutes.vram_substitute(nodes, route.model)
            reason, header = "vram_fallback", "X-Fleet-Vram-Fallback"
        if substitute is None:
            return route
        self.services.event(reason, model=route.model, served=substitute, num_ctx=route.num_ctx)
        headers[header] = f"{route.model} -> {substitute}"
        notes["substitution"] = {"reason": reason, "requested": route.model, "served": substitute}
        return attrs.evolve(route, model=substitute, original_model=route.model)

    async def _auto_pull(self, route: RouteRequest, headers: dict[str, str]) -> web.Response | None:
        fleet = self.services.fleet
        wanted = (route.model, *route.fallback_models)
        if any(fleet.holders(normalize_model(m)) for m in wanted):
            return None
        node = substitutes.pull_target(list(fleet.nodes.values()))
        if node is None:
            return error_response(self.api, 503, f"no online node to pull model '{route.model}' onto",
                                  headers={"Retry-After": "5"})
        self.services.event("auto_pull", node_id=node.node_id, model=route.model)
        failure = await substitutes.pull(
            self.services, node, route.model, self.services.config["FLEET_AUTO_PULL_TIMEOUT"]
        )
        if failure is not None:
            if "does not exist" in failure or "not found" in failure:
                return error_response(self.api, 404, self.not_found(route.model))
            return error_response(self.api, 503, f"auto-pull of '{route.model}' on "
                                  f"{node.node_id} failed: {failure}", headers={"Retry-After": "5"})
        fleet.add_available(node.node_id, AvailableModel(name=route.model))
        headers["X-Fleet-Auto-Pull"] = node.node_id
        return None

    def parse(self, request: web.Request, body: dict[str, Any]) -> RouteRequest:
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
            num_ctx = options.get("num_ctx")
            if num_ctx is not None:
                if isinstance(num_ctx, bool) or not isinstance(num_ctx, int | float):
                    raise BadRequest('option "num_ctx" must be of type integer')
                num_ctx = int(num_ctx)
        num_predict = options.get("num_predict") if isinstance(options, dict) else None
        if self.api == "openai":
            num_predict = body.get("max_completion_tokens", body.get("max_tokens"))
        if isinstance(num_predict, bool) or not isinstance(num_predict, int | float):
            num_predict = None
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
            num_predict=None if num_predict is None else int(num_predict),
            estimated_tokens=estimate_tokens(body),
            fallback_models=tuple(fallbacks),
            tags=request_tags(request, body),
            request_id=request.headers.get("X-Request-Id", "")[:64] or new_request_id(),
        )


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


# --- listings -----------------------------------------------------------------------------------


def _listed_nodes(services: Any):
    return [n for n in services.fleet.nodes.values() if n.status != "offline" and n.ollama_url]


def _default_details(details: dict[str, Any]) -> dict[str, Any]:
    base = {"parent_model": "", "format": "gguf", "family": "", "families": None,
            "parameter_size": "", "quantization_level": ""}
    return {**base, **details}


def tags_body(services: Any) -> dict[str, Any]:
    models: dict[str, dict[str, Any]] = {}
    for node in sorted(_listed_nodes(services), key=lambda n: n.node_id):
        for key, m in node.available.items():
            entry = models.get(key)
            if entry is None:
                entry = models[key] = {
                    "name": m.name,
                    "model": m.name,
                    "modified_at": m.modified_at or _EPOCH,
                    "size": m.size_bytes,
                    "digest": m.digest,
                    "details": _default_details(m.details),
                    "fleet_nodes": [],
                }
                if m.capabilities:
                    entry["capabilities"] = list(m.capabilities)
            entry["fleet_nodes"].append(node.node_id)
    return {"models": sorted(models.values(), key=lambda e: e["name"])}


def ps_body(services: Any) -> dict[str, Any]:
    models: dict[str, dict[str, Any]] = {}
    for node in sorted(_listed_nodes(services), key=lambda n: n.node_id):
        for key, m in node.loaded.items():
            entry = models.get(key)
            if entry is None:
                entry = models[key] = {
                    "name": m.name,
                    "model": m.name,
                    "size": m.size_bytes,
                    "digest": m.digest,
                    "details": _default_details(m.details),
                    "expires_at": m.expires_at or _EPOCH,
                    "size_vram": m.size_vram,
                    "context_length": m.context_length,
                    "fleet_nodes": [],
                }
            elif (m.expires_at or "") > entry["expires_at"]:
                entry["expires_at"] = m.expires_at
            entry["fleet_nodes"].append(node.node_id)
    return {"models": sorted(models.values(), key=lambda e: e["expires_at"], reverse=True)}


_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")


def fleet_version(services: Any) -> str:
    """The lowest Ollama version in the fleet: what every node can be relied on to speak."""
    found = []
    for node in _listed_nodes(services):
        version = node.heartbeat.ollama.version if node.heartbeat.ollama else ""
        match = _VERSION.match(version or "")
        if match:
            found.append((tuple(int(x) for x in match.groups()), f"{'.'.join(match.groups())}"))
    return min(found)[1] if found else "0.0.0"


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _unix(stamp: str | None) -> int:
    """Unix seconds of an Ollama timestamp (which may carry nanoseconds Python cannot parse)."""
    if not stamp:
        return 0
    try:
        return int(datetime.fromisoformat(_FRACTION.sub(r"\1", stamp.replace("Z", "+00:00"))).timestamp())
    except ValueError:
        return 0


def _owner(name: str) -> str:
    parts = name.split(":")[0].split("/")
    return parts[-2] if len(parts) >= 2 else "library"


def openai_model(name: str, modified_at: str | None, model_id: str | None = None) -> dict[str, Any]:
    return {"id": model_id or name, "object": "model", "created": _unix(modified_at),
            "owned_by": _owner(name)}


class Listings:
    def __init__(self, services: Any) -> None:
        self.services = services

    async def root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running", content_type="text/plain", charset="utf-8")

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": fleet_version(self.services), "herd_version": __version__})

    async def tags(self, request: web.Request) -> web.Response:
        return web.json_response(tags_body(self.services))

    async def ps(self, request: web.Request) -> web.Response:
        return web.json_response(ps_body(self.services))

    async def v1_models(self, request: web.Request) -> web.Response:
        data = [openai_model(e["name"], e["modified_at"]) for e in tags_body(self.services)["models"]]
        return web.json_response({"object": "list", "data": data})

    async def v1_model(self, request: web.Request) -> web.Response:
        wanted = request.match_info["model"]
        key = normalize_model(wanted)
        for entry in tags_body(self.services)["models"]:
            if normalize_model(entry["name"]) == key:
                return web.json_response(openai_model(entry["name"], entry["modified_at"], wanted))
        return error_response("openai", 404, _quoted_not_found(wanted))

    async def show(self, request: web.Request) -> web.Response:
        """Forwarded to a node that holds the model; ``model_info`` and the rest come from Ollama."""
        services = self.services
        try:
            raw, body = await read_json_object(request, 1024 * 1024)
        except BadRequest as exc:
            return error_response("ollama", exc.status, exc.message)
        model = body.get("model") or body.get("name")
        if not model:
            return error_response("ollama", 400, "model is required")
        if not isinstance(model, str):
            return error_response("ollama", 400, "invalid value for 'model': expected a string")
        key = normalize_model(model)
        holders = [n for n in services.fleet.holders(key) if n.routable and n.ollama_url]
        if not holders:
            known = bool(services.fleet.holders(key))
            if known:
                return error_response("ollama", 503, f"no node holding model '{model}' is online")
            return error_response("ollama", 404, _quoted_not_found(model))
        holders.sort(key=lambda n: (key not in n.loaded, n.node_id))
        last_error = ""
        for node in holders:
            try:
                async with services.http.post(
                    f"{node.ollama_url}/api/show", data=raw,
                    headers=services.upstream_headers("/api/show", raw),
                ) as upstream:
                    payload = await upstream.read()
                    if upstream.status < 500 and upstream.status != 404:
                        return web.Response(
                            status=upstream.status, body=payload,
                            content_type="application/json", headers={"X-Fleet-Node": node.node_id},
                        )
                    last_error = f"{node.node_id}: HTTP {upstream.status}"
            except Exception as exc:  # noqa: BLE001 - try the next holder
                last_error = f"{node.node_id}: {type(exc).__name__}"
        return error_response("ollama", 502, f"no node could describe model '{model}' ({last_error})")


def routes(services: Any) -> list[RouteDef]:
    listing = Listings(services)
    shaper = Shaper(services.config, services.event)
    keep_alive = keepalive.KeepAlive(services)

    def infer(path: str, api: Api, stream_default: bool, not_found=_quoted_not_found, **kw: Any):
        return InferenceRoute(services, path, api, stream_default=stream_default,
                              not_found=not_found, shaper=shaper, keep_alive=keep_alive, **kw)

    inference = [
        infer("/api/chat", "ollama", True),
        infer("/api/generate", "ollama", True, empty_model_status=404),
        infer("/api/embed", "ollama", False, _embed_not_found),
        infer("/api/embeddings", "ollama", False, _embed_not_found),
        infer("/v1/chat/completions", "openai", False),
        infer("/v1/completions", "openai", False),
        infer("/v1/embeddings", "openai", False, _embed_not_found),
    ]
    defs = [RouteDef(method="POST", path=r.path, handler=r.handle) for r in inference]
    for path, handler in (
        ("/", listing.root),
        ("/api/version", listing.version),
        ("/api/tags", listing.tags),
    ):
        defs.append(RouteDef(method="GET", path=path, handler=handler))
        defs.append(RouteDef(method="HEAD", path=path, handler=handler))
    defs += [
        RouteDef(method="GET", path="/api/ps", handler=listing.ps),
        RouteDef(method="POST", path="/api/show", handler=listing.show),
        RouteDef(method="GET", path="/v1/models", handler=listing.v1_models),
        RouteDef(method="GET", path="/v1/models/{model:.+}", handler=listing.v1_model),
    ]
    return defs
