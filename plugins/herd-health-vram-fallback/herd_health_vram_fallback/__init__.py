"""Health check ``vram_fallback``: requests answered by a larger model of the line because the one
the client asked for was loaded nowhere (``herd-shaper-vram-fallback``, events ``vram_fallback``).
Clients get a slower, bigger model than they chose; the fix is to hold theirs where it fits."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from herd_kernel.api import Finding, HealthCheck, HealthSnapshot
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl
from herd_kernel.models import normalize_model

KIND = "vram_fallback"
NAMED_AT_MOST = 3  # substitutions named in the finding, most frequent first

SETTINGS = (
    Setting(env="FLEET_HEALTH_VRAM_FALLBACK_WARN_PER_HOUR", type=int, bounds="[1, )", default=10,
            help="VRAM fallbacks in the last hour at which the vram_fallback health check "
            "warns (fewer are information); as many earlier in the day and none since are "
            "reported as stopped."),
)


class VramFallbackCheck:
    id = "vram_fallback"
    title = "VRAM fallbacks"

    def __init__(self, warn_per_hour: int) -> None:
        self.warn_per_hour = warn_per_hour

    def evaluate(self, snapshot: HealthSnapshot) -> Sequence[Finding]:
        hour, day = snapshot.hour.events.get(KIND, 0), snapshot.day.events.get(KIND, 0)
        if hour:
            severity, window, count = ("warning" if hour >= self.warn_per_hour else "info",
                                       snapshot.hour, hour)
            when = "in the last hour"
        elif day >= self.warn_per_hour:
            severity, window, count, when = "info", snapshot.day, day, \
                "earlier in the last 24 hours, none in the last hour"
        else:
            return []
        since = snapshot.now - window.seconds
        pairs = Counter((str(e.get("model")), str(e.get("served"))) for e in snapshot.events
                        if e.get("kind") == KIND and float(e.get("timestamp") or 0) >= since)
        top = pairs.most_common(NAMED_AT_MOST)
        named = "; ".join(f"{asked} -> {served} ({n})" for (asked, served), n in top)
        which = f" Most often: {named}." if top else ""
        asked = list(dict.fromkeys(a for (a, _), _n in top))
        hints = [where_it_fits(snapshot.status.get("nodes", ()), model) for model in asked]
        resolved = severity == "info" and not hour
        return [Finding(
            check_id=self.id, severity=severity,
            title="VRAM fallbacks stopped" if resolved else "Requests served by a larger model",
            detail=f"{count} requests {when} asked for a model loaded on no node and were "
            f"answered by a larger one of its line instead (FLEET_VRAM_FALLBACK).{which}",
            advice=("Load the requested model where it fits and keep it loaded, so clients get "
                    "the model they asked for" + (": " + "; ".join(hints) if hints else "")
                    + ". If the larger model suits them, have them ask for it by name."),
            data={"count": count, "hour": hour, "day": day,
                  "substitutions": [{"requested": a, "served": s, "count": n}
                                    for (a, s), n in top]})]


def where_it_fits(nodes: Sequence[Mapping[str, Any]], model: str) -> str:
    """Which online node could hold ``model``: one with it on disk and the memory, else the one
    with the most memory available (to pull it to)."""
    key = normalize_model(model)
    size, holders = 0.0, set()
    for node in nodes:
        for endpoint in node.get("endpoints", ()):
            for name, gb in (endpoint.get("models_available_gb") or {}).items():
                if normalize_model(name) == key:
                    size = max(size, float(gb or 0.0))
                    holders.add(node["node_id"])
    free = {n["node_id"]: float((n.get("memory") or {}).get("available_gb") or 0.0)
            for n in nodes if n.get("status") == "online"}
    room = sorted((gb, node_id) for node_id, gb in free.items() if gb > size)
    weighs = f" ({size:.1f} GB)" if size else ""
    on_disk = [(gb, node_id) for gb, node_id in room if node_id in holders]
    if on_disk:
        gb, node_id = on_disk[-1]
        return f"{model}{weighs} is on {node_id}'s disk with {gb:.1f} GB free: load it there"
    pullers = {n["node_id"] for n in nodes if any(e.get("kind") == "ollama" and e.get("healthy")
                                                  for e in n.get("endpoints", ()))}
    room = [(gb, node_id) for gb, node_id in room if node_id in pullers]
    if room:
        gb, node_id = room[-1]
        return f"pull {model}{weighs} onto {node_id}, {gb:.1f} GB free"
    return f"no online node has room for {model}{weighs} now: free memory or add a node"


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_health_checks(config: Config) -> Sequence[HealthCheck]:
    return [VramFallbackCheck(config["FLEET_HEALTH_VRAM_FALLBACK_WARN_PER_HOUR"])]
