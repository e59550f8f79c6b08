"""Health check ``model_thrashing``: a node that keeps loading models and unloading them (the
router's ``model_loaded`` and ``model_unloaded`` events), so requests there wait for loads."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from attrs import frozen

from herd_kernel.api import Finding, HealthSnapshot, Tally
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl

SETTINGS = (
    Setting(env="FLEET_HEALTH_THRASHING_SWAPS", type=int, default=6,
            help="Model swaps on one node in the last hour (loads matched by unloads, from the "
            "router's model_loaded and model_unloaded events) at which the model_thrashing check "
            "warns."),
)


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@frozen(kw_only=True)
class ThrashingCheck:
    id = "model_thrashing"
    title = "Model thrashing"

    swaps: int

    def evaluate(self, snapshot: HealthSnapshot) -> list[Finding]:
        nodes = {node["node_id"]: node for node in snapshot.status.get("nodes", ())}
        findings = []
        for node_id, counts in sorted(snapshot.hour.node_events.items()):
            loads, unloads = counts.get("model_loaded", 0), counts.get("model_unloaded", 0)
            # a load with no unload beside it is a node filling its memory, not thrashing
            if min(loads, unloads) >= self.swaps:
                findings.append(self.finding(snapshot, node_id, loads, unloads,
                                             nodes.get(node_id) or {}))
        return findings

    def finding(self, snapshot: HealthSnapshot, node_id: str, loads: int, unloads: int,
                node: Mapping[str, Any]) -> Finding:
        since = snapshot.now - snapshot.hour.seconds
        models = Counter(e.get("model", "?") for e in snapshot.events
                         if e.get("kind") == "model_loaded" and e.get("node_id") == node_id
                         and e.get("timestamp", 0) >= since)
        cold = snapshot.hour.by_node.get(node_id, Tally()).cold_loads
        pressure = (node.get("memory") or {}).get("pressure", "normal")
        held = sum(len(e.get("models_loaded", ())) for e in node.get("endpoints", ()))
        detail = (f"{node_id} loaded a model {counted(loads, 'time')} and unloaded one "
                  f"{counted(unloads, 'time')} in the last hour: {min(loads, unloads)} swaps "
                  f"(the check warns from {self.swaps}).")
        if cold:
            detail += f" {cold} of the requests it answered waited for a model to load."
        if models:
            detail += " Loaded most: " + ", ".join(
                f"{model} ({n})" for model, n in models.most_common(3)) + "."
        detail += f" It holds {counted(held, 'model')} now; its memory pressure is {pressure}."
        if pressure != "normal":
            advice = (f"{node_id} cannot hold these models side by side: give it more memory, "
                      "serve smaller quantizations there, or send fewer different models to it. "
                      "A longer OLLAMA_KEEP_ALIVE will not help while its memory is short.")
        else:
            advice = (f"Keep models in memory longer on {node_id}: set OLLAMA_KEEP_ALIVE for its "
                      "Ollama (30m, or -1 to keep them until memory is needed), and raise "
                      "OLLAMA_MAX_LOADED_MODELS if its memory can hold more at once; otherwise "
                      "give it more memory.")
        return Finding(
            check_id=self.id, severity="warning", node_id=node_id,
            title=f"{node_id} keeps loading and unloading models",
            detail=detail, advice=advice,
            data={"loads": loads, "unloads": unloads, "cold_loads": cold,
                  "models": dict(models), "memory_pressure": pressure})


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_health_checks(config: Config) -> Sequence[ThrashingCheck]:
    return [ThrashingCheck(swaps=max(1, config["FLEET_HEALTH_THRASHING_SWAPS"]))]
