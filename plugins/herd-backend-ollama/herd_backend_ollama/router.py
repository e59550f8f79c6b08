"""Router side of the Ollama backend: the Ollama-native and OpenAI-compatible routes.

Inference routes parse the body once for the fields routing needs, then forward the client's own
bytes (rewritten only as the README's "What the router changes" table says, each change announced)
to the chosen node's Ollama, which serves both APIs itself, so every field survives. Load/unload
commands go to every node holding the model (``keepalive``). Listing routes answer from
the fleet registry without touching a node.
"""

from __future__ import annotations

import collections
import json
import re
from datetime import datetime
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

from herd_backend_ollama import engine, keepalive
from herd_backend_ollama.engine import parse_version as _parse_version
from herd_kernel import __version__
from herd_kernel.api import Refusal, RouteDef
from herd_kernel.models import normalize_model
from herd_kernel.wire import (
    REQUEST_ID,
    BadRequest,
    error_response,
)

_EPOCH = "1970-01-01T00:00:00Z"


_quoted_not_found = quoted_not_found


class InferenceRoute:
    """A POST route that is routed to one node: chat, generate, embeddings."""

    def __init__(self, services: Any, front: Front, *, keep_alive: keepalive.KeepAlive) -> None:
        self.services = services
        self.keep_alive = keep_alive
        self.front = front
        self.path = front.path
        self.api = front.api
        self.not_found = front.not_found

    def _only_elsewhere(self, key: str) -> bool:
        """Some node lists the model, and none of them serves it through Ollama."""
        kinds = {n.serving[key].kind for n in self.services.fleet.nodes.values()
                 if key in n.serving}
        return bool(kinds) and "ollama" not in kinds

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw, body = await self.services.read_json(request)  # BadRequest: the middleware answers
        route = self.front.parse(request, body)
        request[REQUEST_ID] = route.request_id
        keep_alive = keepalive.keep_alive_seconds(body.get("keep_alive")) \
            if self.api == "ollama" else None
        command = keep_alive is not None and keepalive.is_command(self.path, body)
        if command:
            answered = await self.keep_alive.command(route, body, keep_alive)
            if answered is not None:
                return answered
        if is_load(self.path, body) and self._only_elsewhere(route.key):
            # only engines that keep their one model loaded have it: nothing to send them
            return load_answer(self.path, route.model, body)
        shapers = self.services.shapers
        served, announced = route, None
        if shapers.early:  # substitutions and auto-pull (herd-shaper-* plugins)
            shaped = await shapers.before(route, substitute=not command)
            if isinstance(shaped, Refusal):
                return shapers.refuse(self.api, shaped, self.not_found, route.model)
            served, announced = shaped
        prepare = shapers.prepare(route, raw, body, self.services.engines, announced)

        response = await self.services.proxy(
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


# --- listings -----------------------------------------------------------------------------------


def _json_bytes(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


def _default_details(details: dict[str, Any]) -> dict[str, Any]:
    base = {"parent_model": "", "format": "gguf", "family": "", "families": None,
            "parameter_size": "", "quantization_level": ""}
    return {**base, **details}


# What /api/version says before any node has reported one: the Ollama release that added
# /v1/messages, the newest API the router serves (clients parse and compare it; 0.0.0 fails them).
SPOKEN_VERSION = "0.14.0"


class FleetIndex:
    """The listings (``/api/tags``, ``/api/ps``, ``/v1/models``, ``/api/version``) kept up to date
    node by node, their bodies cached as bytes.

    A request after no fleet change serves the cached bytes. After changes, one pass looks for
    nodes whose model dicts were replaced (an identity test each: a heartbeat replaces them), only
    those are compared, and only models whose holders changed are serialized again; a heartbeat
    that changes no list changes no byte.
    """

    def __init__(self, fleet: Any) -> None:
        self.fleet = fleet
        self.version = -1
        # node_id -> (available dict, its length, loaded dict, its length, listed) as last seen
        self.seen: dict[str, tuple[Any, int, Any, int, bool]] = {}
        self.contrib: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {}
        self.available: dict[str, dict[str, Any]] = {}  # model key -> node_id -> AvailableModel
        self.loaded: dict[str, dict[str, Any]] = {}  # model key -> node_id -> LoadedModel
        self.versions: collections.Counter[str] = collections.Counter()
        self.lowest: str | None = None  # the fleet's lowest version, remembered when nodes go
        self.tag_parts: dict[str, tuple[str, bytes, dict[str, Any]]] = {}  # key -> (name, json, entry)
        self.ps_parts: dict[str, tuple[str, bytes, dict[str, Any]]] = {}  # key -> (expires, json, entry)
        self.dirty_tags: set[str] = set()
        self.dirty_ps: set[str] = set()
        self.bodies: dict[str, bytes] = {}

    def refresh(self) -> None:
        fleet = self.fleet
        if fleet.version == self.version and self.version >= 0:
            return
        self.version = fleet.version
        versions_changed = False
        for node_id, node in fleet.nodes.items():
            listed = node.status != "offline" and bool(node.endpoints)
            av, ld = node.available, node.loaded
            seen = self.seen.get(node_id)
            if seen is not None and seen[0] is av and seen[1] == len(av) and seen[2] is ld \
                    and seen[3] == len(ld) and seen[4] == listed:
                continue  # router-side additions (add_available, add_loaded) change the length
            self.seen[node_id] = (av, len(av), ld, len(ld), listed)
            ollama = node.endpoint("ollama")
            version = ollama.version if listed and ollama is not None else ""
            new = (dict(av) if listed else {}, dict(ld) if listed else {}, version)
            old = self.contrib.get(node_id, ({}, {}, ""))
            self.contrib[node_id] = new
            _diff(self.available, self.dirty_tags, node_id, old[0], new[0])
            _diff(self.loaded, self.dirty_ps, node_id, old[1], new[1])
            if old[2] != new[2]:
                versions_changed = True
                for value, step in ((old[2], -1), (new[2], 1)):
                    if _parse_version(value) is not None:
                        self.versions[value] += step
                        if self.versions[value] <= 0:
                            del self.versions[value]
        if versions_changed and self.versions:
            low = min(self.versions, key=lambda v: _parse_version(v) or ())
            self.lowest = ".".join(map(str, _parse_version(low) or ()))

    # --- bodies ----------------------------------------------------------------------------------

    def tags(self) -> dict[str, Any]:
        self._update_tags()
        return {"models": [entry for _n, _b, entry in sorted(self.tag_parts.values(),
                                                             key=lambda p: p[0])]}

    def ps(self) -> dict[str, Any]:
        self._update_ps()
        return {"models": [entry for _e, _b, entry in _ps_order(self.ps_parts.values())]}

    def tags_bytes(self) -> bytes:
        if self._update_tags() or "tags" not in self.bodies:
            parts = sorted(self.tag_parts.values(), key=lambda p: p[0])
            self.bodies["tags"] = b'{"models":[' + b",".join(b for _n, b, _e in parts) + b"]}"
            data = [openai_model(e["name"], e["modified_at"]) for _n, _b, e in parts]
            self.bodies["v1"] = json.dumps({"object": "list", "data": data}).encode()
        return self.bodies["tags"]

    def v1_models_bytes(self) -> bytes:
        self.tags_bytes()
        return self.bodies["v1"]

    def ps_bytes(self) -> bytes:
        if self._update_ps() or "ps" not in self.bodies:
            parts = _ps_order(self.ps_parts.values())
            self.bodies["ps"] = b'{"models":[' + b",".join(b for _e, b, _x in parts) + b"]}"
        return self.bodies["ps"]

    def version_string(self) -> str:
        self.refresh()
        return self.lowest or SPOKEN_VERSION

    def _update_tags(self) -> bool:
        self.refresh()
        if not self.dirty_tags:
            return False
        for key in self.dirty_tags:
            holders = self.available.get(key)
            if not holders:
                self.tag_parts.pop(key, None)
                continue
            m = holders[min(holders)]
            entry = {"name": m.name, "model": m.name, "modified_at": m.modified_at or _EPOCH,
                     "size": m.size_bytes, "digest": m.digest,
                     "details": _default_details(m.details)}
            if m.capabilities:
                entry["capabilities"] = list(m.capabilities)
            entry["fleet_nodes"] = sorted(holders)
            self.tag_parts[key] = (m.name, json.dumps(entry).encode(), entry)
        self.dirty_tags.clear()
        return True

    def _update_ps(self) -> bool:
        self.refresh()
        if not self.dirty_ps:
            return False
        for key in self.dirty_ps:
            holders = self.loaded.get(key)
            if not holders:
                self.ps_parts.pop(key, None)
                continue
            nodes = sorted(holders)
            m = holders[nodes[0]]
            expires = max([m.expires_at or _EPOCH, *(holders[n].expires_at or "" for n in nodes)])
            entry = {"name": m.name, "model": m.name, "size": m.size_bytes, "digest": m.digest,
                     "details": _default_details(m.details), "expires_at": expires,
                     "size_vram": m.size_vram, "context_length": m.context_length,
                     "fleet_nodes": nodes}
            self.ps_parts[key] = (expires, json.dumps(entry).encode(), entry)
        self.dirty_ps.clear()
        return True


def _diff(index: dict[str, dict[str, Any]], dirty: set[str], node_id: str,
          old: dict[str, Any], new: dict[str, Any]) -> None:
    """Move one node's contribution to ``index`` from ``old`` to ``new``, noting changed keys."""
    for key in old.keys() - new.keys():
        holders = index[key]
        del holders[node_id]
        if not holders:
            del index[key]
        dirty.add(key)
    for key, model in new.items():
        if old.get(key) != model:
            index.setdefault(key, {})[node_id] = model
            dirty.add(key)


def _ps_order(parts: Any) -> list[tuple[str, bytes, dict[str, Any]]]:
    """Latest expiry first, as Ollama's /api/ps; ties by name."""
    return sorted(sorted(parts, key=lambda p: p[2]["name"]), key=lambda p: p[0], reverse=True)


def tags_body(services: Any) -> dict[str, Any]:
    return FleetIndex(services.fleet).tags()


def ps_body(services: Any) -> dict[str, Any]:
    return FleetIndex(services.fleet).ps()


def fleet_version(services: Any) -> str:
    """The lowest Ollama version in the fleet: what every node can be relied on to speak."""
    return FleetIndex(services.fleet).version_string()


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
        self.index = FleetIndex(services.fleet)

    # the bodies as bytes, for the routes and bench/listings.py
    def tags_bytes(self) -> bytes:
        return self.index.tags_bytes()

    def ps_bytes(self) -> bytes:
        return self.index.ps_bytes()

    def v1_models_bytes(self) -> bytes:
        return self.index.v1_models_bytes()

    def version_bytes(self) -> bytes:
        return json.dumps({"version": self.index.version_string(),
                           "herd_version": __version__}).encode()

    async def root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running", content_type="text/plain", charset="utf-8")

    async def version(self, request: web.Request) -> web.Response:
        return _json_bytes(self.version_bytes())

    async def tags(self, request: web.Request) -> web.Response:
        return _json_bytes(self.tags_bytes())

    async def ps(self, request: web.Request) -> web.Response:
        return _json_bytes(self.ps_bytes())

    async def v1_models(self, request: web.Request) -> web.Response:
        return _json_bytes(self.v1_models_bytes())

    async def v1_model(self, request: web.Request) -> web.Response:
        wanted = request.match_info["model"]
        self.index.refresh()
        holders = self.index.available.get(normalize_model(wanted))
        if holders:
            m = holders[min(holders)]
            return web.json_response(openai_model(m.name, m.modified_at or _EPOCH, wanted))
        return error_response("openai", 404, _quoted_not_found(wanted))

    async def show(self, request: web.Request) -> web.Response:
        """Forwarded to a node that holds the model; ``model_info`` and the rest come from Ollama."""
        services = self.services
        try:
            raw, body = await services.read_json(request, 1024 * 1024)
        except BadRequest as exc:
            return error_response("ollama", exc.status, exc.message)
        model = body.get("model") or body.get("name")
        if not model:
            return error_response("ollama", 400, "model is required")
        if not isinstance(model, str):
            return error_response("ollama", 400, "invalid value for 'model': expected a string")
        key = normalize_model(model)
        holders = [n for n in services.fleet.holders(key)
                   if n.routable and (e := n.serving.get(key)) is not None and e.kind == "ollama"]
        if not holders:
            elsewhere = [n for n in services.fleet.holders(key) if n.routable and key in n.serving]
            if elsewhere:  # served by another kind of engine, which has no /api/show
                return show_from_listing(key, min(elsewhere, key=lambda n: n.node_id))
            known = bool(services.fleet.holders(key))
            if known:
                return error_response("ollama", 503, f"no node holding model '{model}' is online")
            return error_response("ollama", 404, _quoted_not_found(model))
        holders.sort(key=lambda n: (key not in n.loaded, n.node_id))
        last_error = ""
        for node in holders:
            try:
                async with services.http.post(
                    f"{node.serving[key].url}/api/show", data=raw,
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


def routes(services: Any, ollama: engine.OllamaEngine) -> list[RouteDef]:
    listing = Listings(services)
    ollama.bind(services)
    keep_alive = keepalive.KeepAlive(services)

    inference = [InferenceRoute(services, front, keep_alive=keep_alive)
                 for front in FRONTS.values()]
    defs = [RouteDef(method="POST", path=r.path, handler=r.handle, shared=True, priority=10)
            for r in inference]
    for path, handler in (
        ("/", listing.root),
        ("/api/version", listing.version),
        ("/api/tags", listing.tags),
    ):
        defs.append(RouteDef(method="GET", path=path, handler=handler, shared=True, priority=10))
        defs.append(RouteDef(method="HEAD", path=path, handler=handler, shared=True, priority=10))
    defs += [
        RouteDef(method="GET", path="/api/ps", handler=listing.ps, shared=True, priority=10),
        RouteDef(method="POST", path="/api/show", handler=listing.show, shared=True, priority=10),
        RouteDef(method="GET", path="/v1/models", handler=listing.v1_models, shared=True,
                 priority=10),
        RouteDef(method="GET", path="/v1/models/{model:.+}", handler=listing.v1_model,
                 shared=True, priority=10),
    ]
    return defs
