"""Auto-pull (opt-in): a model no node has is pulled onto the online node with the most room
before the request is scored, then served there (``X-Fleet-Auto-Pull`` names the node). Its
settings may be changed while the router runs: they are read per request."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import aiohttp

from herd_kernel.api import Provision, Refusal, ShapeContext
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl
from herd_kernel.models import NodeState, RouteRequest, normalize_model

SETTINGS = (
    Setting(env="FLEET_AUTO_PULL", type=bool, default=False, runtime=True,
            help="When no node has the requested model, pull it onto the online node with the most "
            "free disk and memory, then serve it (X-Fleet-Auto-Pull names the node)."),
    Setting(env="FLEET_AUTO_PULL_TIMEOUT", type=float, default=900.0, runtime=True,
            help="Seconds an auto-pull may take before the request fails with 503."),
)


def pull_target(nodes: list[NodeState]) -> NodeState | None:
    """The online node with the most room: free disk first (the download), then memory."""
    online = [n for n in nodes if n.routable and (e := n.endpoint("ollama")) is not None
              and e.healthy]
    if not online:
        return None
    return max(online, key=lambda n: (n.heartbeat.disk.available_gb,
                                      n.heartbeat.memory.available_gb, n.node_id))


async def pull(ctx: ShapeContext, node: NodeState, model: str, timeout: float) -> str | None:
    """Pull ``model`` on ``node``; returns None on success, else the reason it failed."""
    try:
        endpoint = node.endpoint("ollama")
        if endpoint is None:
            return f"node {node.node_id} reports no Ollama"
        status, raw = await ctx.endpoint_post(
            endpoint.url, "/api/pull", {"model": model, "stream": False}, timeout)
        body = json.loads(raw) if raw.strip() else None
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if status == 200 and isinstance(body, dict) and body.get("status") == "success":
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return str(error or f"HTTP {status}")


class AutoPull:
    """Registered always; does nothing while ``FLEET_AUTO_PULL`` is off (one dict lookup)."""

    name = "auto_pull"
    order = 0

    async def provide(self, route: RouteRequest, ctx: ShapeContext) -> Provision | Refusal | None:
        if not ctx.config["FLEET_AUTO_PULL"]:
            return None
        fleet = ctx.fleet
        if any(fleet.holders(normalize_model(m)) for m in (route.model, *route.fallback_models)):
            return None
        node = pull_target(list(fleet.nodes.values()))
        if node is None:
            return Refusal(status=503, message=f"no online node to pull model '{route.model}' onto",
                           headers={"Retry-After": "5"})
        ctx.event("auto_pull", node_id=node.node_id, model=route.model)
        failure = await pull(ctx, node, route.model, float(ctx.config["FLEET_AUTO_PULL_TIMEOUT"]))
        if failure is not None:
            if "does not exist" in failure or "not found" in failure:
                return Refusal(status=404)
            return Refusal(status=503, message=f"auto-pull of '{route.model}' on "
                           f"{node.node_id} failed: {failure}", headers={"Retry-After": "5"})
        return Provision(node_id=node.node_id, model=route.model, kind="ollama",
                         header="X-Fleet-Auto-Pull")


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_request_shapers(config: Config) -> Sequence[Any]:
    return [AutoPull()]
