"""Router side when this backend serves the client APIs itself (run alone, or beside a backend
that does not): the inference routes it can reach engines for, and listings of the models its
engines report. When the Ollama backend is loaded too, its richer routes serve these paths (the
kernel picks the higher priority) and still reach these engines through ``engine``."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from herd_api_formats.requests import (
    FRONTS,
    Front,
    is_load,
    load_answer,
    quoted_not_found,
    show_from_listing,
)

from herd_backend_openai.engine import NATIVE, TRANSLATED
from herd_kernel import __version__
from herd_kernel.api import Refusal, RouteDef
from herd_kernel.models import normalize_model
from herd_kernel.wire import REQUEST_ID, error_response

# what /api/version says: the Ollama API release whose routes this backend translates
SPOKEN_VERSION = "0.12.0"


class Inference:
    def __init__(self, services: Any, front: Front) -> None:
        self.services = services
        self.front = front

    async def handle(self, request: web.Request) -> web.StreamResponse:
        services = self.services
        raw, body = await services.read_json(request)  # BadRequest: the middleware answers
        route = self.front.parse(request, body)
        request[REQUEST_ID] = route.request_id
        if is_load(route.path, body):  # these engines keep their one model loaded
            return load_answer(route.path, route.model, body)
        shapers = services.shapers
        served, announced = route, None
        if shapers.early:  # substitutions and auto-pull (herd-shaper-* plugins)
            shaped = await shapers.before(route)
            if isinstance(shaped, Refusal):
                return shapers.refuse(route.api, shaped, self.front.not_found, route.model)
            served, announced = shaped
        prepare = shapers.prepare(route, raw, body, services.engines, announced)
        return await services.proxy(request, served, prepare, upstream_path=route.path,
                                             not_found=self.front.not_found)


class Listings:
    """The models the fleet's OpenAI-compatible engines report, as ``/v1/models`` and Ollama's
    ``/api/tags`` and ``/api/ps`` show them; rebuilt only when the fleet changes."""

    def __init__(self, services: Any) -> None:
        self.services = services
        self.fleet = services.fleet
        self.seen = -1  # the fleet version the models were built at
        self.models: dict[str, tuple[str, list[str], bool]] = {}  # key -> (name, nodes, loaded)

    def refresh(self) -> dict[str, tuple[str, list[str], bool]]:
        if self.fleet.version != self.seen:
            self.seen = self.fleet.version
            models: dict[str, tuple[str, list[str], bool]] = {}
            for node in sorted(self.fleet.nodes.values(), key=lambda n: n.node_id):
                if node.status == "offline":
                    continue
                for key, endpoint in node.serving.items():
                    if endpoint.kind != "openai":
                        continue
                    name, nodes, loaded = models.get(key, ("", [], False))
                    entry = node.loaded.get(key) or node.available.get(key)
                    models[key] = (name or (entry.name if entry else key), [*nodes, node.node_id],
                                   loaded or key in node.loaded)
            self.models = models
        return self.models

    async def v1_models(self, request: web.Request) -> web.Response:
        data = [_openai_model(name) for name, _n, _l in sorted(self.refresh().values())]
        return web.json_response({"object": "list", "data": data})

    async def v1_model(self, request: web.Request) -> web.Response:
        wanted = request.match_info["model"]
        found = self.refresh().get(normalize_model(wanted))
        if found is None:
            return error_response("openai", 404, quoted_not_found(wanted))
        return web.json_response(_openai_model(wanted))

    async def tags(self, request: web.Request) -> web.Response:
        models = [_ollama_model(name, nodes) for name, nodes, _l in sorted(self.refresh().values())]
        return web.json_response({"models": models})

    async def ps(self, request: web.Request) -> web.Response:
        models = [{**_ollama_model(name, nodes), "expires_at": "0001-01-01T00:00:00Z",
                   "size_vram": 0, "context_length": 0}
                  for name, nodes, loaded in sorted(self.refresh().values()) if loaded]
        return web.json_response({"models": models})

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": SPOKEN_VERSION, "herd_version": __version__})

    async def show(self, request: web.Request) -> web.Response:
        raw, body = await self.services.read_json(request, 1024 * 1024)
        model = body.get("model") or body.get("name")
        if not isinstance(model, str) or not model:
            return error_response("ollama", 400, "model is required")
        key = normalize_model(model)
        holders = [n for n in self.fleet.nodes.values()
                   if n.routable and key in n.serving and n.serving[key].kind == "openai"]
        if not holders:
            return error_response("ollama", 404, quoted_not_found(model))
        return show_from_listing(key, min(holders, key=lambda n: n.node_id))

    async def root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running", content_type="text/plain", charset="utf-8")


def _openai_model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "herd"}


def _ollama_model(name: str, nodes: list[str]) -> dict[str, Any]:
    return {"name": name, "model": name, "modified_at": "1970-01-01T00:00:00Z", "size": 0,
            "digest": "", "details": {"parent_model": "", "format": "", "family": "",
                                      "families": None, "parameter_size": "",
                                      "quantization_level": ""},
            "fleet_nodes": nodes}


def routes(services: Any) -> list[RouteDef]:
    listing = Listings(services)
    defs = [RouteDef(method="POST", path=path, handler=Inference(services, FRONTS[path]).handle,
                     shared=True)
            for path in (*NATIVE, *TRANSLATED)]
    for method, path, handler in (
        ("GET", "/v1/models", listing.v1_models),
        ("GET", "/v1/models/{model:.+}", listing.v1_model),
        ("GET", "/api/tags", listing.tags),
        ("HEAD", "/api/tags", listing.tags),
        ("GET", "/api/ps", listing.ps),
        ("POST", "/api/show", listing.show),
        ("GET", "/api/version", listing.version),
        ("HEAD", "/api/version", listing.version),
        ("GET", "/", listing.root),
        ("HEAD", "/", listing.root),
    ):
        defs.append(RouteDef(method=method, path=path, handler=handler, shared=True))
    return defs


