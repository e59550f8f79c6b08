"""The router's aiohttp application factory: services under typed keys, JSON error middleware,
the kernel's own routes (``/heartbeat``, ``/fleet/status``) and every backend's routes, and the
start/stop lifecycle (HTTP client pool, registry sweeper, plugin lifecycle hooks).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from herd_kernel import __version__, auth, cors, keys, logs
from herd_kernel.admission import (
    NODE_KEY_HEADER,
    Admission,
    Refused,
    admin_problem,
    fingerprint,
)
from herd_kernel.api import RouteDef, ShapeContext
from herd_kernel.config import Config, RuntimeSettings
from herd_kernel.fleet import Fleet, NodeConflict, PendingNode
from herd_kernel.health import HealthEngine
from herd_kernel.latency import LatencyHistory
from herd_kernel.models import (
    Endpoint,
    Heartbeat,
    NodeState,
    PayloadError,
    RouteRequest,
    Trace,
    normalize_model,
    structure,
    unstructure,
)
from herd_kernel.pipeline import Pipeline
from herd_kernel.plugins import PluginHost
from herd_kernel.queues import QueueManager
from herd_kernel.scoring import Scorer
from herd_kernel.shaping import Shapers
from herd_kernel.upstream import Upstream
from herd_kernel.wire import (
    BODY,
    REQUEST_ID,
    BadRequest,
    api_for_path,
    client_request_id,
    error_response,
    read_json_object,
)

log = structlog.get_logger("herd.router")
request_log = structlog.get_logger("herd.request")

_HEARTBEAT_MAX_BYTES = 4 * 1024 * 1024


class Services:
    """Everything a route handler or plugin needs on the router, created once per app."""

    def __init__(self, config: Config, host: PluginHost) -> None:
        self.config = config
        self.host = host
        # settings changed while running (kept in the data dir) are in force before plugins read
        self.settings = RuntimeSettings(config, Path(config["FLEET_DATA_DIR"]) / "settings.json")
        self.settings.load()
        self.fleet = Fleet(
            degraded_after=config["FLEET_HEARTBEAT_TIMEOUT"],
            offline_after=config["FLEET_HEARTBEAT_OFFLINE"],
            evict_after=config["FLEET_EVICT_AFTER"],
            pending_evict_after=config["FLEET_PENDING_EVICT_AFTER"],
        )
        self.admission = Admission(config, self.fleet)
        self.signals = host.signals(config)
        self.backends = host.backends(config)
        # endpoint kind -> the engine that drives it (``Backend.engine``)
        self.engines: dict[str, Any] = {}
        for backend in self.backends:
            engine = getattr(backend, "engine", None)
            if engine is not None:
                self.engines.setdefault(engine.kind, engine)
        # request shapers: substitutions and body changes, each announced (``shaping``)
        self.shapers = Shapers(host.shapers(config), ShapeContext(
            fleet=self.fleet, config=config, event=self.event, endpoint_post=self.endpoint_post))
        self.latency = LatencyHistory()
        self.scorer = Scorer(self.fleet, self.signals, config, self.latency, self.refuses)
        self.queues = QueueManager(self.fleet, self.scorer, config, warm=self.warm,
                                   event=self.event, policies=host.lane_policies(config))
        self.pipeline = Pipeline(config, self.fleet, self.scorer, self.queues, self.record,
                                 self.upstream_headers)
        self.recent_traces: collections.deque[Trace] = collections.deque(maxlen=200)
        # routing events (context protection, fallbacks...) for health checks and the dashboard
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)
        # the health checks over one cached snapshot: the registry, these events, tallies of traces
        self.health = HealthEngine(
            host.named_health_checks(config), status=lambda: fleet_status(self),
            events=lambda: tuple(self.events), cache_s=config["FLEET_HEALTH_CACHE_S"])
        # extra sections of /fleet/status that plugins provide (the trace store's counters)
        self.status_sections: dict[str, Callable[[], Mapping[str, Any]]] = {}
        self.http: aiohttp.ClientSession  # opened in the app's cleanup context
        self.max_body = int(config["FLEET_MAX_BODY_MB"] * 1024 * 1024)
        self.body_timeout = float(config["FLEET_BODY_TIMEOUT"])
        self.nonces = auth.NonceCache()
        self.keys = keys.Keys(keys.parse(config["FLEET_API_KEYS"]), config["FLEET_ADMIN_KEY"])
        self.router_id = uuid.uuid4().hex[:12]
        self._notify_traces = host.has_impls("herd_request_finished")
        if host.has_impls("herd_node_status_changed"):
            self.fleet.listeners.append(
                lambda node_id, old, new: host.notify(
                    "herd_node_status_changed", node_id=node_id, old=old, new=new
                )
            )
        self.fleet.listeners.append(_log_status_change)
        self.fleet.model_listeners.append(
            lambda kind, node_id, model: self.event(kind, node_id=node_id, model=model))

    async def read_json(
        self, request: web.Request, max_bytes: int | None = None
    ) -> tuple[bytes, dict[str, Any]]:
        """A request's whole JSON body, read under ``FLEET_MAX_BODY_MB`` (or ``max_bytes``) and
        ``FLEET_BODY_TIMEOUT``, and parsed as Ollama's Go decoder would; raises ``BadRequest``."""
        raw, body = await read_json_object(request, max_bytes or self.max_body, self.body_timeout)
        if self.config["FLEET_LOG_BODIES"]:
            request[BODY] = raw
        return raw, body

    def upstream_headers(self, path: str, body: bytes, method: str = "POST") -> dict[str, str]:
        """Headers for a request to a node: signed with the fleet secret when there is one, so a
        node's LAN proxy can tell the router from anyone else."""
        return auth.json_headers(self.config["FLEET_SECRET"], method, path, body)

    side = "router"

    @property
    def draining(self) -> bool:
        """Set by ``drain``: new requests get 503, the router is stopping."""
        return self.pipeline.draining

    async def proxy(
        self, request: web.Request, route: RouteRequest, prepare: Callable[[Any], Any], *,
        upstream_path: str, not_found: Callable[[str], str],
    ) -> web.StreamResponse:
        """Route ``route`` and relay the chosen endpoint's answer (``Pipeline.proxy``)."""
        return await self.pipeline.proxy(request, route, prepare, upstream_path=upstream_path,
                                         not_found=not_found)

    def refuses(self, route: RouteRequest, endpoint: Endpoint) -> str | None:
        """Why ``endpoint`` cannot serve ``route`` (no engine of its kind is loaded, or the
        engine does not speak the route's API), or None."""
        engine = self.engines.get(endpoint.kind)
        if engine is None:
            return f"no backend for its {endpoint.kind} engine is loaded"
        return engine.refuses(route)

    async def endpoint_post(
        self, url: str, path: str, payload: Mapping[str, Any], timeout: float
    ) -> tuple[int, bytes]:
        """POST a JSON command of the router's own (a pre-warm, a pull) to an engine's ``url``,
        signed like routed requests; its status and body. Raises ``TimeoutError``,
        ``aiohttp.ClientError`` or ``OSError`` when the node cannot be reached."""
        body = json.dumps(payload).encode()
        async with self.http.post(
            url + path, data=body, headers=self.upstream_headers(path, body),
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            return response.status, await response.read()

    async def warm(self, node: NodeState, model: str) -> str | None:
        """Load ``model`` on ``node`` through the engine that serves it there; the error, or
        None once it is in memory."""
        endpoint = node.serving.get(normalize_model(model))
        engine = self.engines.get(endpoint.kind) if endpoint is not None else None
        if endpoint is None or engine is None:
            return "no engine serves it there"
        return await engine.warm(endpoint, model)

    def event(self, kind: str, **fields: Any) -> None:
        """Remember a routing event; bounded, in memory, never awaited."""
        self.events.append({"kind": kind, "timestamp": time.time(), **fields})
        self.health.event(kind, fields)
        log.debug("routing event", kind=kind, **fields)

    def restore_latency(self, rows: Iterable[tuple[str, str, float]]) -> None:
        """Seed the latency history from stored ``(node_id, model, latency_ms)`` rows, oldest
        first; the nodes they name are expected back after a restart."""
        rows = list(rows)
        self.latency.restore(rows)
        self.scorer.expected |= {node_id for node_id, _model, _ms in rows}

    def record(self, trace: Trace) -> None:
        """The end of every proxied request: one log line, the recent list, the health
        tallies, plugin hooks."""
        self.recent_traces.append(trace)
        self.health.record(trace)
        if trace.status == "completed" and trace.node_id is not None:
            self.latency.record(
                trace.node_id, normalize_model(trace.model), trace.latency_ms, trace.ttft_ms
            )
        fields = {
            "request_id": trace.request_id,
            "model": trace.model,
            "node": trace.node_id,
            "status": trace.status,
            "http_status": trace.http_status,
            "latency_ms": trace.latency_ms,
            "ttft_ms": trace.ttft_ms,
            "retries": trace.retries,
            "score": trace.score,
            "api": trace.api,
            "stream": trace.stream,
            "tags": list(trace.tags) or None,
            "error": trace.error_message,
        }
        if not logs.request_line(fields):
            request_log.info("request", **fields)
        if self._notify_traces:
            self.host.notify("herd_request_finished", trace=trace, services=self)


def _log_status_change(node_id: str, old: str | None, new: str) -> None:
    log.info("node status", node=node_id, old=old, new=new)


SERVICES = web.AppKey("services", Services)


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error a client sees is in the format of the API it called; never a traceback. A path
    the router does not serve, or a method it does not take there, is gin's plain text, as
    Ollama answers it."""
    api = api_for_path(request.path)
    try:
        return await handler(request)
    except BadRequest as exc:
        response = error_response(api, exc.status, exc.message)
        if exc.closes:
            response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        if getattr(request.match_info, "http_exception", None) is exc:  # routing found nothing
            text = "404 page not found" if exc.status == 404 else "405 method not allowed"
            return web.Response(status=exc.status, text=text, content_type="text/plain",
                                charset="utf-8", headers=_allow(exc))
        message = exc.text or exc.reason
        return error_response(api, exc.status, message, headers=_allow(exc))
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:  # noqa: BLE001 - the client gets a JSON 500, the log gets the traceback
        request_id = request.get(REQUEST_ID) or client_request_id(request)
        log.exception("unhandled error", path=request.path, method=request.method,
                      request_id=request_id or None)
        return error_response(api, 500, "internal router error",
                              headers={"X-Request-Id": request_id} if request_id else None)


def _allow(exc: web.HTTPException) -> dict[str, str] | None:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else None


# --- kernel routes ------------------------------------------------------------------------------


async def heartbeat(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    admission = services.admission
    try:
        raw, body = await services.read_json(request, _HEARTBEAT_MAX_BYTES)
        secret = services.config["FLEET_SECRET"]
        if secret:
            problem = auth.verify(
                secret, request.headers.get(auth.HEADER), request.method, request.path, raw,
                services.nonces, not_before=admission.started,
            )
            if problem:
                log.warning("heartbeat refused", peer=request.remote, reason=problem)
                return web.json_response({"error": f"unauthorized: {problem}"}, status=401)
        names = _upgrade_fragments(body, services.engines)
        try:
            hb = structure(body, Heartbeat)
        except PayloadError as exc:
            raise PayloadError(_renamed(exc.field, names), exc.message) from None
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        kind = await admission.admit(
            hb, raw, request.headers, request.remote,
            sockname[0] if isinstance(sockname, tuple) else None, secret_verified=bool(secret),
            names=names,
        )
    except BadRequest as exc:
        response = web.json_response({"error": f"invalid heartbeat: {exc.message}"},
                                     status=exc.status)
        if exc.closes:
            response.force_close()
        return response
    except PayloadError as exc:
        return web.json_response(
            {"error": f"invalid heartbeat: {exc}", "field": exc.field}, status=400
        )
    except Refused as exc:
        if exc.status in (401, 409):
            log.warning("heartbeat refused", peer=request.remote, node=hb.node_id,
                        reason=exc.message)
        return web.json_response(exc.body, status=exc.status)
    if kind == "pending":
        key = request.headers.get(NODE_KEY_HEADER, "")
        pending = services.fleet.apply_pending(hb, request.remote, key, fingerprint(key))
        if pending is None:
            return web.json_response({"status": "draining", "node_id": hb.node_id})
        return web.json_response({
            "status": "pending", "node_status": "pending", "admission": "pending",
            "node_id": hb.node_id, "fingerprint": pending.fingerprint,
            "message": f"waiting for the owner: on the router run `herd nodes approve "
                       f"{hb.node_id}` (key {pending.fingerprint})",
        }, status=202)
    try:
        state = services.fleet.apply_heartbeat(hb, peer_ip=request.remote, admission=kind)
    except NodeConflict as exc:
        return web.json_response({"error": str(exc)}, status=409)
    if hb.draining:
        return web.json_response({"status": "draining", "node_id": hb.node_id})
    return web.json_response({"status": "ok", "node_status": state.status, "admission": kind})


def _upgrade_fragments(body: dict[str, Any], engines: Mapping[str, Any]) -> list[str]:
    """Agents before endpoints reported one engine as a top-level fragment named after its kind
    (``{"<kind>": {"url": ...}}``): read each such fragment as one endpoint of that kind, so a
    fleet can update its agents one machine at a time. What the agent called each endpoint."""
    endpoints = body.get("endpoints")
    names = [f"endpoints[{i}]" for i in range(len(endpoints))] if isinstance(endpoints, list) \
        else []
    for kind in engines:
        fragment = body.get(kind)
        if isinstance(fragment, dict) and isinstance(endpoints, list | None):
            endpoints = body["endpoints"] = [*(endpoints or ()), {**fragment, "kind": kind}]
            del body[kind]
            names.append(kind)
    return names


def _renamed(field: str, names: list[str]) -> str:
    """A heartbeat field path in the agent's own terms (``endpoints[1].url`` -> ``<kind>.url``)."""
    if not field.startswith("endpoints["):
        return field
    index, _, rest = field.removeprefix("endpoints[").partition("]")
    if index.isdigit() and int(index) < len(names):
        return names[int(index)] + rest
    return field


def _endpoint_view(fleet: Fleet, state: NodeState, endpoint: Endpoint) -> dict[str, Any]:
    return {
        "kind": endpoint.kind,
        "engine": endpoint.engine,
        "url": endpoint.url,
        "version": endpoint.version,
        "healthy": endpoint.healthy,
        "num_parallel": endpoint.num_parallel,
        "models_loaded": [
            {
                "name": m.name,
                "size_gb": round(m.size_bytes / 1024**3, 3),
                "size_vram_gb": round(m.size_vram / 1024**3, 3),
                "context_length": m.context_length,
                "expires_at": m.expires_at,
                "requests_active": _active(fleet, state.node_id, normalize_model(m.name)),
            }
            for m in endpoint.models_loaded
        ],
        "models_available": [m.name for m in endpoint.models_available],
        # their size on disk (weights): what a loaded copy holds beyond it is context (KV cache)
        "models_available_gb": {m.name: round(m.size_bytes / 1024**3, 3)
                                for m in endpoint.models_available},
    }


def fleet_status(services: Services) -> dict[str, Any]:
    fleet = services.fleet
    now = fleet.clock()
    nodes = []
    models_loaded = 0
    for state in sorted(fleet.nodes.values(), key=lambda n: n.node_id):
        hb = state.heartbeat
        endpoints = [_endpoint_view(fleet, state, e) for e in state.endpoints]
        models_loaded += sum(len(e.models_loaded) for e in state.endpoints)
        # each kind's first endpoint also under its kind's name, as agents before 0.2 reported it
        by_kind: dict[str, Any] = {}
        for view in endpoints:
            by_kind.setdefault(view["kind"], {
                **view, "requests_active": fleet.node_in_flight.get(state.node_id, 0)})
        nodes.append(
            {
                "node_id": state.node_id,
                "status": state.status,
                "admission": state.admission,
                "agent_version": hb.agent_version,
                # an agent of another release may report fields this router reads differently
                "agent_version_mismatch": bool(hb.agent_version) and hb.agent_version != __version__,
                "last_heartbeat_s_ago": round(now - state.last_seen, 3),
                "draining": hb.draining,
                "paused": hb.paused,
                "hardware": {
                    "memory_total_gb": hb.memory.total_gb,
                    "cores_physical": hb.cpu.cores_physical,
                    "cores_logical": hb.cpu.cores_logical,
                    "arch": hb.arch,
                    "os": hb.os,
                    "hostname": hb.hostname,
                },
                "cpu": unstructure(hb.cpu),
                "memory": unstructure(hb.memory),
                "disk": unstructure(hb.disk),
                "thermal": unstructure(hb.thermal),
                "gpus": unstructure(hb.gpus),
                "endpoints": endpoints,
                **{kind: view for kind, view in by_kind.items() if kind not in _NODE_KEYS},
                "extras": hb.extras,
            }
        )
    for pending in sorted(fleet.pending.values(), key=lambda p: p.node_id):
        nodes.append(_pending_entry(pending, now))
    queue = services.queues.snapshot(services.latency)
    body = {
        "fleet": {
            "nodes_total": len(fleet.nodes),
            "nodes_online": sum(1 for n in fleet.nodes.values() if n.status == "online"),
            "nodes_degraded": sum(1 for n in fleet.nodes.values() if n.status == "degraded"),
            "nodes_offline": sum(1 for n in fleet.nodes.values() if n.status == "offline"),
            "nodes_pending": len(fleet.pending),
            "models_loaded": models_loaded,
            "requests_active": fleet.requests_active,
        },
        "nodes": nodes,
        "queues": queue["queues"],
        "holding": queue["holding"],
        "router_version": __version__,
        "timestamp": time.time(),
    }
    for name, section in services.status_sections.items():
        try:
            body.setdefault(name, dict(section()))
        except Exception as exc:  # noqa: BLE001 - a plugin's section must not break the status
            body.setdefault(name, {"error": repr(exc)})
    return body


# the keys of a node's status entry, which an endpoint kind's name must not replace
_NODE_KEYS = frozenset({"node_id", "status", "admission", "agent_version", "hardware", "cpu",
                        "memory", "disk", "thermal", "gpus", "endpoints", "extras", "draining",
                        "paused", "last_heartbeat_s_ago", "agent_version_mismatch"})


def _pending_entry(pending: PendingNode, now: float) -> dict[str, Any]:
    """A node waiting for approval: who, from where, with which key; it gets no traffic."""
    return {
        "node_id": pending.node_id,
        "status": "pending",
        "admission": "pending",
        "key_fingerprint": pending.fingerprint,
        "peer": pending.peer,
        "agent_version": pending.agent_version,
        "last_heartbeat_s_ago": round(now - pending.last_seen, 3),
        "hardware": {"hostname": pending.hostname},
        "endpoints": [{"url": pending.url, "models_available": pending.models}]
        if pending.url else [],
    }


def _active(fleet: Fleet, node_id: str, key: str) -> int:
    counters = fleet.queues.get((node_id, key))
    return counters.in_flight if counters else 0


async def status_handler(request: web.Request) -> web.Response:
    return web.json_response(fleet_status(request.app[SERVICES]), dumps=_dumps)


async def health_handler(request: web.Request) -> web.Response:
    """The health checks' findings, a score and the fleet's vitals (docs/health.md)."""
    return web.json_response(request.app[SERVICES].health.report(), dumps=_dumps)


async def queue_handler(request: web.Request) -> web.Response:
    """Queue depths and estimated waits, cheap enough for clients to poll before backing off."""
    services = request.app[SERVICES]
    body = services.queues.snapshot(services.latency)
    body["timestamp"] = time.time()
    return web.json_response(body)


async def traces_handler(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    try:
        limit = max(1, min(200, int(request.query.get("limit", "50"))))
    except ValueError:
        raise BadRequest("limit must be an integer") from None
    traces = list(services.recent_traces)[-limit:]
    return web.json_response({"traces": [unstructure(t) for t in reversed(traces)]}, dumps=_dumps)


async def hello_handler(request: web.Request) -> web.Response:
    """Who this router is; with a secret, proof that it knows it (an HMAC of the caller's nonce)."""
    services = request.app[SERVICES]
    nonce = request.query.get("nonce", "")
    if len(nonce) > 128:
        raise BadRequest("nonce too long")
    secret = services.config["FLEET_SECRET"]
    return web.json_response({
        "service": "herd",
        "version": __version__,
        "router_id": services.router_id,
        "secured": bool(secret),
        "proof": auth.router_proof(secret, nonce) if secret and nonce else None,
    })


# --- admission: the owner's routes ---------------------------------------------------------------


def admin_route(handler: Any, *, write: bool = False) -> Any:
    """Guard a ``/fleet/*`` route (see ``admission.admin_problem``)."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        services = request.app[SERVICES]
        problem = admin_problem(services.admission, request, write=write, clients=services.keys)
        if problem is not None:
            return web.json_response({"error": problem[1]}, status=problem[0])
        return await handler(request)

    return keys.mark(guarded, "write" if write else "read")


async def nodes_handler(request: web.Request) -> web.Response:
    """Every node the router knows, with how it was admitted: live ones, those waiting for
    approval, and admitted ones not seen since the router started."""
    services = request.app[SERVICES]
    admission, fleet = services.admission, services.fleet
    now = fleet.clock()
    rows = []
    for state in fleet.nodes.values():
        record = admission.records.get(state.node_id)
        rows.append({
            "node_id": state.node_id, "admission": state.admission or "local",
            "status": state.status, "key_fingerprint": record.fingerprint if record else None,
            "url": state.url, "hostname": state.heartbeat.hostname,
            "last_heartbeat_s_ago": round(now - state.last_seen, 3),
            "admitted_at": record.admitted_at if record else None,
        })
    for pending in fleet.pending.values():
        rows.append({
            "node_id": pending.node_id, "admission": "pending", "status": "pending",
            "key_fingerprint": pending.fingerprint, "url": pending.url, "peer": pending.peer,
            "hostname": pending.hostname,
            "last_heartbeat_s_ago": round(now - pending.last_seen, 3), "admitted_at": None,
        })
    for record in admission.records.values():
        if record.node_id not in fleet.nodes:
            rows.append({
                "node_id": record.node_id, "admission": "admitted", "status": "not seen",
                "key_fingerprint": record.fingerprint, "url": None, "hostname": None,
                "last_heartbeat_s_ago": None, "admitted_at": record.admitted_at,
            })
    rows.sort(key=lambda row: row["node_id"])
    return web.json_response({
        "nodes": rows,
        "enrollment": {"open": admission.window_open(),
                       "until": admission.window_until if admission.window_open() else None},
    })


async def _admin_body(request: web.Request) -> dict[str, Any]:
    _raw, body = await request.app[SERVICES].read_json(request, 64 * 1024)
    return body


async def approve_handler(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    body = await _admin_body(request)
    expected = body.get("fingerprint")
    if expected is not None and not isinstance(expected, str):
        raise BadRequest("fingerprint must be a string")
    node_id = request.match_info["node_id"]
    try:
        record = await services.admission.approve(node_id, expected)
    except Refused as exc:
        return web.json_response(exc.body, status=exc.status)
    return web.json_response({"node_id": node_id, "admission": "admitted",
                              "key_fingerprint": record.fingerprint,
                              "message": "admitted: it joins with its next heartbeat"})


async def remove_handler(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    await _admin_body(request)
    node_id = request.match_info["node_id"]
    if not await services.admission.remove(node_id):
        return web.json_response({"error": f"no node {node_id!r} is known"}, status=404)
    return web.json_response({"node_id": node_id, "removed": True})


async def enroll_handler(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    body = await _admin_body(request)
    minutes = body.get("minutes", services.config["FLEET_ENROLL_MINUTES"] or 10.0)
    number = isinstance(minutes, int | float) and not isinstance(minutes, bool)
    if not number or not 0 <= minutes <= 1440:
        raise BadRequest("minutes must be a number from 0 to 1440")
    until = services.admission.open_window(float(minutes))
    return web.json_response({"open": bool(until), "until": until or None})


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)


# --- the factory --------------------------------------------------------------------------------


_KERNEL_ROUTES = {("POST", "/heartbeat"), ("GET", "/fleet/status"), ("GET", "/fleet/queue"),
                  ("GET", "/fleet/traces"), ("GET", "/fleet/nodes"), ("POST", "/fleet/enroll"),
                  ("GET", "/fleet/hello"), ("GET", "/dashboard/api/health"),
                  ("GET", "/dashboard/login"), ("POST", "/dashboard/login"),
                  ("POST", "/dashboard/logout")}


def create_app(config: Config, host: PluginHost) -> web.Application:
    services = Services(config, host)
    middlewares = [cors.middleware(cors.Origins(config["FLEET_ORIGINS"])), error_middleware]
    if services.keys.required:  # only then: no cost per request without keys
        middlewares.append(keys.middleware(services.keys))
    app = web.Application(middlewares=middlewares, client_max_size=services.max_body + 1024)
    app.on_response_prepare.append(cors.on_prepare)
    app[SERVICES] = services
    for method, path, handler in keys.login_routes(services.keys):
        app.router.add_route(method, path, handler)
        if method == "GET":
            app.router.add_route("HEAD", path, handler)
    app.router.add_post("/heartbeat", keys.mark(heartbeat, "node"))
    app.router.add_get("/fleet/status", admin_route(status_handler))
    app.router.add_get("/fleet/queue", admin_route(queue_handler))
    app.router.add_get("/fleet/traces", admin_route(traces_handler))
    app.router.add_get("/fleet/nodes", admin_route(nodes_handler))
    nodes = "/fleet/nodes/{node_id}"
    app.router.add_post(f"{nodes}/approve", admin_route(approve_handler, write=True))
    app.router.add_post(f"{nodes}/remove", admin_route(remove_handler, write=True))
    app.router.add_post("/fleet/enroll", admin_route(enroll_handler, write=True))
    app.router.add_get("/fleet/hello", keys.mark(hello_handler, "node"))
    app.router.add_get("/dashboard/api/health", admin_route(health_handler))
    claimed: dict[tuple[str, str], tuple[str, RouteDef]] = {}
    for backend in services.backends:
        for route in backend.routes(services):
            key = (route.method.upper(), route.path)
            held = claimed.get(key)
            if held is not None and not (route.shared and held[1].shared):
                raise RuntimeError(f"{route.method} {route.path} claimed by backends "
                                   f"{held[0]!r} and {backend.name!r}")
            if held is None or route.priority > held[1].priority:
                claimed[key] = (backend.name, route)
    for owner, route in host.routes(services):
        key = (route.method.upper(), route.path)
        if key in claimed or key in _KERNEL_ROUTES:
            raise RuntimeError(f"{route.method} {route.path} of plugin {owner!r} is taken")
        claimed[key] = (owner, route)
    for _name, route in claimed.values():
        handler = route.handler
        if route.access != "public":
            handler = admin_route(handler, write=route.access == "write")
        app.router.add_route(route.method, route.path, handler, name=route.name)
    app.cleanup_ctx.append(_lifecycle)
    app.on_startup.append(lambda app: app[SERVICES].admission.open())
    return app


# --- serving -------------------------------------------------------------------------------------

_LINGER_S = 2.0  # after a 413 or 408, read (and drop) what the client still sends, this long


class _ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger, except that a request aiohttp itself refuses as not HTTP it can
    read (a malformed head, broken chunked framing, data after ``Connection: close``) is one INFO
    line: the client's mistake, answered with a 400, is not an error
    of the router's, and a traceback per bad request would let any client flood the log."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        if isinstance(exc_info, HttpProcessingError) and 400 <= (exc_info.code or 400) < 500:
            detail = " ".join(str(exc_info.message).split())[:200]
            self.logger.info(f"{msg}: {detail}", *args)
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kw)


_SERVER_LOG = _ServerLog(logging.getLogger("aiohttp.server"), {})


async def serve(app: web.Application, host: str, port: int, *,
                reuse_address: bool | None = None) -> tuple[web.AppRunner, web.TCPSite]:
    """Listen on ``host:port`` with the router's connection rules: idle keep-alive connections
    close after ``FLEET_KEEPALIVE_TIMEOUT``, a new connection that has not sent a whole request
    head within ``FLEET_HEADER_TIMEOUT`` is closed, and a client that left cancels its handler. The
    CLI and the test fixtures both start the router here."""
    services = app[SERVICES]
    config = services.config
    if not services.keys.required and not (host and auth.is_loopback(host)):
        log.warning("listening beyond this machine with no client API keys: anyone who can "
                    "reach the router may use it; set FLEET_API_KEYS (docs/security.md)",
                    host=host or "*", port=port)
    sweeper: list[asyncio.Task[None]] = []

    async def stop_sweeper(_app: web.Application) -> None:
        for task in sweeper:
            task.cancel()
        await asyncio.gather(*sweeper, return_exceptions=True)

    app.on_shutdown.append(stop_sweeper)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, handler_cancellation=True,
        keepalive_timeout=config["FLEET_KEEPALIVE_TIMEOUT"], lingering_time=_LINGER_S,
        auto_decompress=False,  # wire.read_body inflates, so every encoding error is API JSON
        shutdown_timeout=1.0,  # what is still open after ``drain`` is ended, not waited for
        logger=_SERVER_LOG,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=reuse_address)
    await site.start()
    assert runner.server is not None
    sweeper.append(asyncio.create_task(
        _close_slow_heads(runner.server, config["FLEET_HEADER_TIMEOUT"]), name="herd-head-timeout"))
    return runner, site


async def _close_slow_heads(server: web.Server, timeout: float) -> None:
    """Close connections that have not completed their first request head within ``timeout``
    seconds (a client trickling header bytes, or connecting and saying nothing). Connections that
    have had a request are governed by the keep-alive timeout instead."""
    if timeout <= 0:
        return
    loop = asyncio.get_running_loop()
    first_seen: dict[Any, float] = {}
    while True:
        await asyncio.sleep(max(0.05, min(1.0, timeout / 4)))
        now = loop.time()
        seen: dict[Any, float] = {}
        for handler in server.connections:
            if handler._request_count:  # aiohttp's count of complete request heads
                continue
            since = seen[handler] = first_seen.get(handler, now)
            if now - since > timeout:
                log.info("closing a connection that sent no complete request",
                         peer=handler.peername, after_s=round(now - since, 1))
                handler.force_close()
        first_seen = seen


async def drain(runner: web.AppRunner, grace: float) -> None:
    """Stop listening, refuse new requests on open connections (503, connection closed), give
    running and waiting requests ``grace`` seconds, then end what is left: streams get an
    in-stream error in their own format, waiting requests a 503."""
    services = runner.app[SERVICES]
    services.pipeline.draining = True
    for site in list(runner.sites):
        await site.stop()
    queues = services.queues
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, grace)
    while (queues.active or queues.waiting_total or queues.held) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    left = queues.end_all("the router is shutting down")
    if left:
        log.warning("shutdown grace over; ended open requests", requests=left, grace_s=grace)
        while queues.active and loop.time() < deadline + 2.0:  # their error frames go out
            await asyncio.sleep(0.02)


async def _announce(services: Services) -> list[Any]:
    """Let every discovery plugin announce the router; a failing one is logged, not fatal."""
    config = services.config
    withdrawals = []
    for discovery in services.host.discoveries(config):
        url = f"http://{config['FLEET_HOST']}:{config['FLEET_PORT']}"
        try:
            withdrawals.append(await discovery.announce(url, config))
        except Exception as exc:  # noqa: BLE001
            log.warning("discovery announce failed", discovery=discovery.name, error=repr(exc))
    return withdrawals


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    config = services.config
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, enable_cleanup_closed=True)
    services.http = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(
            total=None,
            sock_connect=config["FLEET_CONNECT_TIMEOUT"],
            sock_read=config["FLEET_READ_TIMEOUT"],
        ),
        auto_decompress=True,
    )
    services.pipeline.upstream = Upstream(  # the routed requests' own lean client
        connect_timeout=config["FLEET_CONNECT_TIMEOUT"], read_timeout=config["FLEET_READ_TIMEOUT"])
    sweeper = asyncio.create_task(services.fleet.run_sweeper(), name="herd-fleet-sweeper")
    queue_pass = asyncio.create_task(services.queues.run(), name="herd-queues")
    await services.host.lifecycle("herd_startup", services)
    withdrawals = await _announce(services)
    try:
        yield
    finally:
        for withdraw in withdrawals:
            try:
                await withdraw()
            except Exception as exc:  # noqa: BLE001
                log.warning("discovery withdrawal failed", error=repr(exc))
        await services.host.lifecycle("herd_shutdown", services, reverse=True)
        sweeper.cancel()
        queue_pass.cancel()
        await asyncio.gather(sweeper, queue_pass, return_exceptions=True)
        await services.queues.close()
        await services.http.close()
        await services.pipeline.upstream.close()
