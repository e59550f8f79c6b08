"""Opt-in ways to serve a model the fleet cannot serve hot: use a loaded model of the same
category instead (VRAM fallback), or pull the model onto a node first (auto-pull). Both are off by
default, and both say what they did in response headers.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import structlog

from herd_kernel.config import Setting
from herd_kernel.models import AvailableModel, NodeState, normalize_model

log = structlog.get_logger("herd.ollama")

SETTINGS = (
    Setting(env="FLEET_VRAM_FALLBACK", type=bool, default=False,
            help="When the requested model is loaded on no node, serve it with a loaded model of "
            "the same family (else the same kind: chat, vision, embedding) and say so in "
            "X-Fleet-Vram-Fallback."),
    Setting(env="FLEET_AUTO_PULL", type=bool, default=False,
            help="When no node has the requested model, pull it onto the online node with the most "
            "free disk and memory, then serve it (X-Fleet-Auto-Pull names the node)."),
    Setting(env="FLEET_AUTO_PULL_TIMEOUT", type=float, default=900.0,
            help="Seconds an auto-pull may take before the request fails with 503."),
)


def _kind(model: AvailableModel | None, details: dict[str, Any]) -> str:
    caps = set(model.capabilities) if model is not None else set()
    family = str(details.get("family") or "")
    if "embedding" in caps or "bert" in family:
        return "embedding"
    if "vision" in caps:
        return "vision"
    return "chat"


def vram_substitute(nodes: list[NodeState], wanted: str) -> str | None:
    """A loaded model to serve ``wanted`` with, or None. Only called when ``wanted`` is loaded
    nowhere. Same family first, then the same kind; among those the one closest in size."""
    key = normalize_model(wanted)
    reference: AvailableModel | None = None
    for node in nodes:
        reference = node.available.get(key) or reference
    if reference is None:
        return None
    family = str(reference.details.get("family") or "")
    kind = _kind(reference, reference.details)
    best: tuple[int, int, str] | None = None
    for node in nodes:
        if not node.routable:
            continue
        for loaded_key, model in node.loaded.items():
            if loaded_key == key:
                return None  # it is loaded after all: no substitute needed
            same_family = bool(family) and model.details.get("family") == family
            same_kind = _kind(node.available.get(loaded_key), model.details) == kind
            if not (same_family or same_kind):
                continue
            rank = (0 if same_family else 1, abs(model.size_bytes - reference.size_bytes), model.name)
            if best is None or rank < best:
                best = rank
    return best[2] if best else None


def pull_target(nodes: list[NodeState]) -> NodeState | None:
    """The online node with the most room: free disk first (the download), then memory."""
    online = [n for n in nodes if n.routable and n.ollama_url and n.heartbeat.ollama is not None
              and n.heartbeat.ollama.healthy]
    if not online:
        return None
    return max(online, key=lambda n: (n.heartbeat.disk.available_gb,
                                      n.heartbeat.memory.available_gb, n.node_id))


async def pull(services: Any, node: NodeState, model: str, timeout: float) -> str | None:
    """Pull ``model`` on ``node``; returns None on success, else the reason it failed."""
    try:
        status, raw = await services.node_post(
            node, "/api/pull", {"model": model, "stream": False}, timeout)
        body = json.loads(raw) if raw.strip() else None
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if status == 200 and isinstance(body, dict) and body.get("status") == "success":
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return str(error or f"HTTP {status}")
