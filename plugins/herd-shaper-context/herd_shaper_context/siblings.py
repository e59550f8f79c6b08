"""The one rule under which a model the client did not name may answer
(``larger_hot_sibling``), and what it needs to know about models: their line, their size, whether
they think. Used by the context upgrade here and by ``herd-shaper-vram-fallback``."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from herd_kernel.models import AvailableModel, LoadedModel, NodeState, normalize_model

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
