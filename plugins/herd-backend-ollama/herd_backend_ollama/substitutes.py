"""Serving a model the fleet cannot serve hot: the one rule under which a different model may
answer (``larger_hot_sibling``), used by the opt-in VRAM fallback and by context protection's
upgrade; and the opt-in auto-pull. Every substitution is said in response headers and the trace.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import aiohttp
import structlog

from herd_kernel.config import Setting
from herd_kernel.models import AvailableModel, LoadedModel, NodeState, normalize_model

log = structlog.get_logger("herd.ollama")

SETTINGS = (
    Setting(env="FLEET_VRAM_FALLBACK", type=bool, default=False,
            help="When the requested model is loaded on no node, serve it with a strictly larger "
            "loaded model of the same line (qwen2.5:7b -> qwen2.5:14b; never another line, never "
            "a thinking model for a non-thinking one) and say so in X-Fleet-Vram-Fallback."),
    Setting(env="FLEET_AUTO_PULL", type=bool, default=False,
            help="When no node has the requested model, pull it onto the online node with the most "
            "free disk and memory, then serve it (X-Fleet-Auto-Pull names the node)."),
    Setting(env="FLEET_AUTO_PULL_TIMEOUT", type=float, default=900.0,
            help="Seconds an auto-pull may take before the request fails with 503."),
)


_PARAMS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMBT]?)\s*$", re.IGNORECASE)
_SCALE = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}
# how thinking models are known when a node reports no capabilities (older Ollama /api/tags)
THINKING_NAMES = re.compile(
    r"(^|/)(deepseek-r1|qwq|phi4-reasoning|gpt-oss|magistral|openthinker|qwen3(?=:|$))"
)


def model_line(name: str) -> str:
    """The name before the tag: ``qwen2.5:7b`` -> ``qwen2.5`` (``qwen2.5-coder`` is its own line)."""
    return normalize_model(name).rpartition(":")[0]


def parameter_count(details: dict[str, Any]) -> float | None:
    """``details.parameter_size`` ("7.6B", "137M") as a number, or None when it does not say."""
    match = _PARAMS.match(str(details.get("parameter_size") or ""))
    if match is None:
        return None
    return float(match[1]) * _SCALE[match[2].upper()]


def thinks(name: str, capabilities: tuple[str, ...] | list[str] | None) -> bool:
    """Whether a model can think: the capabilities a node reported, else its name."""
    if capabilities:
        return "thinking" in capabilities
    return bool(THINKING_NAMES.search(normalize_model(name)))


def _larger(candidate: LoadedModel, reference: AvailableModel) -> bool:
    """Strictly larger: by parameter count when both say, else by size on disk."""
    mine, theirs = parameter_count(candidate.details), parameter_count(reference.details)
    if mine is not None and theirs is not None:
        return mine > theirs
    return candidate.size_bytes > reference.size_bytes > 0


def larger_hot_sibling(
    nodes: Iterable[NodeState], wanted: str, *, min_context: int = 0
) -> str | None:
    """The one rule for answering with a model the client did not name.

    Only when ``wanted`` is loaded on no routable node, and only with a model of the same line
    (same name before the tag) that is strictly larger, loaded on a routable node (with at least
    ``min_context`` of context when given), and not a thinking model standing in for a
    non-thinking one. Among those, the smallest. None when there is no such model."""
    key = normalize_model(wanted)
    line = key.rpartition(":")[0]
    nodes = [n for n in nodes if n.routable]
    reference: AvailableModel | None = None
    for node in nodes:
        if key in node.loaded:
            return None  # hot somewhere: the client gets what it asked for
        reference = node.available.get(key) or reference
    if reference is None:
        return None  # unknown here: its size cannot be compared, and a 404 is the honest answer
    may_think = thinks(reference.name, reference.capabilities)
    best: tuple[float, int, str] | None = None
    for node in nodes:
        for loaded_key, model in node.loaded.items():
            if loaded_key.rpartition(":")[0] != line or not _larger(model, reference):
                continue
            if min_context and model.context_length < min_context:
                continue
            available = node.available.get(loaded_key)
            if not may_think and thinks(model.name, available.capabilities if available else None):
                continue
            rank = (parameter_count(model.details) or 0.0, model.size_bytes, model.name)
            if best is None or rank < best:
                best = rank
    return best[2] if best else None


def vram_substitute(nodes: Iterable[NodeState], wanted: str) -> str | None:
    """A loaded model to serve ``wanted`` with (``FLEET_VRAM_FALLBACK``), by the rule above."""
    return larger_hot_sibling(nodes, wanted)


def pull_target(nodes: list[NodeState]) -> NodeState | None:
    """The online node with the most room: free disk first (the download), then memory."""
    online = [n for n in nodes if n.routable and (e := n.endpoint("ollama")) is not None
              and e.healthy]
    if not online:
        return None
    return max(online, key=lambda n: (n.heartbeat.disk.available_gb,
                                      n.heartbeat.memory.available_gb, n.node_id))


async def pull(services: Any, node: NodeState, model: str, timeout: float) -> str | None:
    """Pull ``model`` on ``node``; returns None on success, else the reason it failed."""
    try:
        endpoint = node.endpoint("ollama")
        if endpoint is None:
            return f"node {node.node_id} reports no Ollama"
        status, raw = await services.endpoint_post(
            endpoint.url, "/api/pull", {"model": model, "stream": False}, timeout)
        body = json.loads(raw) if raw.strip() else None
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if status == 200 and isinstance(body, dict) and body.get("status") == "success":
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return str(error or f"HTTP {status}")
