"""The owner's fleet administration APIs: the configuration in force and its runtime toggles
(``/dashboard/api/settings``), and each node's models with when this router last used them
(``/dashboard/api/model-management``). Both read the registry only, never a node."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from herd_kernel import __version__
from herd_kernel.api import RouteDef, RouterAPI
from herd_kernel.config import Config, Setting, SettingError
from herd_kernel.hookspecs import hookimpl
from herd_kernel.models import NodeState, normalize_model

log = structlog.get_logger("herd.fleet_admin")

# besides what is marked secret, a name like these is never shown either
_SECRET_NAME = re.compile(r"SECRET|KEY|TOKEN|PASSWORD", re.IGNORECASE)
_MAX_BODY = 64 * 1024


def is_secret(spec: Setting) -> bool:
    return spec.secret or bool(_SECRET_NAME.search(spec.env))


def _shown(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def setting_view(config: Config, spec: Setting) -> dict[str, Any]:
    """One setting as the API shows it; a secret's value and default only as whether set."""
    secret = is_secret(spec)
    view: dict[str, Any] = {
        "name": spec.key, "env": spec.env,
        "value": None if secret else _shown(config[spec.env]),
        "default": None if secret else _shown(spec.default),
        "source": config.source(spec.env), "runtime": spec.runtime,
        "type": spec.type.__name__, "scope": spec.scope, "help": spec.help,
        "plugin": spec.plugin or "kernel",
    }
    if secret:
        view["secret"] = True
        view["set"] = bool(config[spec.env])
    if spec.choices:
        view["choices"] = list(spec.choices)
    if view["source"] == "runtime":
        view["configured"] = _shown(config.configured(spec.env))
    return view


def toggles(config: Config) -> dict[str, Any]:
    """The runtime settings by short name: what a POST may change."""
    return {spec.key: _shown(config[spec.env]) for spec in config.specs
            if spec.runtime and not is_secret(spec)}


def node_versions(state: NodeState) -> dict[str, Any]:
    return {
        "node_id": state.node_id, "status": state.status,
        "agent_version": state.heartbeat.agent_version,
        "engines": [{"kind": e.kind, "engine": e.engine, "version": e.version}
                    for e in state.endpoints],
    }


def settings_body(services: RouterAPI) -> dict[str, Any]:
    config = services.config
    specs = sorted(config.specs, key=lambda s: s.env)
    return {
        "settings": [setting_view(config, spec) for spec in specs],
        "toggles": toggles(config),
        "runtime_file": str(services.settings.path),
        "nodes": [node_versions(s) for s in sorted(services.fleet.nodes.values(),
                                                   key=lambda s: s.node_id)],
        "router_version": __version__,
    }


def model_rows(services: RouterAPI, state: NodeState) -> list[dict[str, Any]]:
    """Every model on the node, on disk or in memory, by engine; ``last_used``: when this router
    last started a request for it there (its lane's stamp, O(1); None: not since it started)."""
    lanes = services.fleet.queues
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for endpoint in state.endpoints:
        for model in endpoint.models_available:
            rows[(endpoint.kind, model.name)] = {
                "name": model.name, "kind": endpoint.kind,
                "size_gb": round(model.size_bytes / 1024**3, 3), "loaded": False,
                "modified_at": model.modified_at,
            }
        for loaded in endpoint.models_loaded:
            row = rows.setdefault((endpoint.kind, loaded.name), {
                "name": loaded.name, "kind": endpoint.kind,
                "size_gb": round(loaded.size_bytes / 1024**3, 3), "modified_at": None})
            row.update(loaded=True, context_length=loaded.context_length,
                       size_loaded_gb=round(loaded.size_bytes / 1024**3, 3),
                       size_vram_gb=round(loaded.size_vram / 1024**3, 3),
                       expires_at=loaded.expires_at)
    for row in rows.values():
        lane = lanes.get((state.node_id, normalize_model(row["name"])))
        used = lane is not None and lane.last_used > 0
        row["last_used"] = lane.last_used if used else None
        row["requests_active"] = lane.in_flight if lane is not None else 0
        row["requests_completed"] = lane.completed if lane is not None else 0
        row["requests_failed"] = lane.failed if lane is not None else 0
    return sorted(rows.values(), key=lambda r: (r["name"], r["kind"]))


def model_management_body(services: RouterAPI) -> dict[str, Any]:
    nodes = []
    for state in sorted(services.fleet.nodes.values(), key=lambda s: s.node_id):
        hb = state.heartbeat
        models = model_rows(services, state)
        nodes.append({
            "node_id": state.node_id, "status": state.status, "hostname": hb.hostname,
            "memory": {"total_gb": hb.memory.total_gb, "used_gb": hb.memory.used_gb,
                       "available_gb": hb.memory.available_gb, "pressure": hb.memory.pressure},
            "disk": {"total_gb": hb.disk.total_gb, "available_gb": hb.disk.available_gb},
            "models_loaded": sum(1 for m in models if m["loaded"]),
            "models": models,
        })
    return {"nodes": nodes, "timestamp": time.time()}


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status)


def routes(services: RouterAPI) -> list[RouteDef]:
    async def get_settings(request: web.Request) -> web.Response:
        return web.json_response(settings_body(services))

    async def post_settings(request: web.Request) -> web.Response:
        raw, _folded = await services.read_json(request, _MAX_BODY)  # checked as Ollama would
        body = json.loads(raw)  # with its keys as sent (read_json folds them to lower case)
        if not body:
            return _error(400, "name at least one setting to change, e.g. {\"auto_pull\": false}")
        try:
            done = await services.settings.change(body)
        except SettingError as exc:
            return _error(400, str(exc), exc.field)
        except OSError as exc:
            log.error("runtime settings not saved", error=repr(exc))
            return _error(500, f"the settings could not be saved, so nothing changed: {exc}")
        changed = []
        for env, (old, new) in done.items():
            spec = services.config.spec(env)
            changed.append({"name": spec.key if spec else env, "env": env, "old": _shown(old),
                            "new": _shown(new), "source": services.config.source(env)})
            if old != new:
                services.event("setting_changed", setting=env, old=_shown(old), new=_shown(new))
            log.info("setting changed", setting=env, old=old, new=new,
                     source=services.config.source(env), peer=request.remote)
        return web.json_response({"toggles": toggles(services.config), "changed": changed})

    async def get_model_management(request: web.Request) -> web.Response:
        return web.json_response(model_management_body(services))

    return [
        RouteDef(method="GET", path="/dashboard/api/settings", handler=get_settings,
                 access="read"),
        RouteDef(method="POST", path="/dashboard/api/settings", handler=post_settings,
                 access="write"),
        RouteDef(method="GET", path="/dashboard/api/model-management",
                 handler=get_model_management, access="read"),
    ]


@hookimpl
def herd_routes(services: RouterAPI) -> Sequence[RouteDef]:
    return routes(services)
