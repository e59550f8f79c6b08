"""Health check ``underutilized_memory``: a node with room to spare while a model it could hold
keeps being cold-loaded, or waits in queues, on other nodes. It speaks only about demand the
fleet had in the last hour (or has queued now): an idle fleet with free memory is fine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from herd_kernel.api import Finding, HealthCheck, HealthSnapshot
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl
from herd_kernel.models import normalize_model

SETTINGS = (
    Setting(env="FLEET_HEALTH_UNDERUTILIZED_FREE_GB", type=float, default=8.0,
            help="Memory (GB) a node must have available, and more than the model needs, for "
            "the underutilized_memory health check to say it could hold a model in demand."),
    Setting(env="FLEET_HEALTH_UNDERUTILIZED_MIN_COLD_LOADS", type=int, bounds="[1, )", default=3,
            help="Cold loads of one model on other nodes in the last hour before the "
            "underutilized_memory health check counts it as demand a node with room could meet."),
    Setting(env="FLEET_HEALTH_UNDERUTILIZED_MIN_WAITING", type=int, bounds="[1, )", default=2,
            help="Requests for one model waiting in other nodes' queues right now before the "
            "underutilized_memory health check counts it as demand a node with room could meet."),
)


class UnderutilizedCheck:
    id = "underutilized_memory"
    title = "Memory left unused"

    def __init__(self, free_gb: float, min_cold_loads: int, min_waiting: int) -> None:
        self.free_gb, self.min_cold_loads, self.min_waiting = free_gb, min_cold_loads, min_waiting

    def evaluate(self, snapshot: HealthSnapshot) -> Sequence[Finding]:
        nodes = snapshot.status.get("nodes", ())
        sizes = weights(nodes)
        findings = []
        for node in nodes:
            if not self.has_room(node):
                continue
            unmet = self.unmet(node, snapshot, sizes)
            if unmet:
                findings.append(self.finding(node, unmet, snapshot))
        return findings

    def has_room(self, node: Mapping[str, Any]) -> bool:
        memory = node.get("memory") or {}
        return (node.get("status") == "online" and not node.get("paused")
                and not node.get("draining") and memory.get("pressure", "normal") == "normal"
                and float(memory.get("available_gb") or 0.0) >= self.free_gb)

    def unmet(self, node: Mapping[str, Any], snapshot: HealthSnapshot,
              sizes: Mapping[str, float]) -> list[dict[str, Any]]:
        """The models in demand elsewhere that fit in this node's free memory, with the numbers."""
        node_id = node["node_id"]
        available = float(node["memory"]["available_gb"])
        own = snapshot.hour.by_node.get(node_id)
        # cold loads are counted per model and per node, not per pair: what this node loaded
        # itself is taken off, so what is left happened elsewhere (at least)
        own_cold = own.cold_loads if own else 0
        cold = {model: tally.cold_loads - own_cold for model, tally in snapshot.hour.by_model.items()}
        waiting: dict[str, int] = {}
        for lane in (snapshot.status.get("queues") or {}).values():
            if lane.get("node") != node_id and lane.get("pending"):
                model = normalize_model(str(lane.get("model", "")))
                waiting[model] = waiting.get(model, 0) + int(lane["pending"])
        loaded_here = {normalize_model(m.get("name", "")) for e in node.get("endpoints", ())
                       for m in e.get("models_loaded", ())}
        on_disk = {normalize_model(name) for e in node.get("endpoints", ())
                   for name in e.get("models_available", ())}
        # a model it lacks is one to pull, which takes an Ollama that answers
        can_pull = any(e.get("kind") == "ollama" and e.get("healthy", True)
                       for e in node.get("endpoints", ()))
        unmet = []
        for model in sorted(set(cold) | set(waiting)):
            cold_loads, queued = max(0, cold.get(model, 0)), waiting.get(model, 0)
            if cold_loads < self.min_cold_loads and queued < self.min_waiting:
                continue
            size = sizes.get(model)
            if model in loaded_here or size is None or size >= available:
                continue  # already serving it here, or not known to fit
            if model not in on_disk and not can_pull:
                continue
            unmet.append({"model": model, "size_gb": size, "cold_loads_elsewhere": cold_loads,
                          "waiting_elsewhere": queued, "on_disk": model in on_disk})
        return unmet

    def finding(self, node: Mapping[str, Any], unmet: list[dict[str, Any]],
                snapshot: HealthSnapshot) -> Finding:
        node_id = node["node_id"]
        available = float(node["memory"]["available_gb"])
        demand = []
        for item in unmet:
            why = []
            if item["cold_loads_elsewhere"]:
                why.append(f"cold-loaded {item['cold_loads_elsewhere']} times on other nodes in "
                           "the last hour")
            if item["waiting_elsewhere"]:
                why.append(f"{item['waiting_elsewhere']} requests waiting in other nodes' queues")
            demand.append(f"{item['model']} ({item['size_gb']:.1f} GB): {' and '.join(why)}")
        own = snapshot.hour.by_node.get(node_id)
        share = f" {node_id} served {own.requests if own else 0} of " \
            f"{snapshot.hour.total.requests} requests in the last hour."
        load = [i["model"] for i in unmet if i["on_disk"]]
        pull = [i["model"] for i in unmet if not i["on_disk"]]
        steps = []
        if pull:
            steps.append(f"Pull {', '.join(pull)} onto {node_id} (`ollama pull NAME` there)")
        steps.append(f"{'then k' if pull else 'K'}eep {', '.join(load + pull)} loaded on "
                     f"{node_id} (OLLAMA_KEEP_ALIVE=24h there, or load it once with keep_alive "
                     "-1): the router prefers a loaded copy")
        return Finding(
            check_id=self.id, severity="info", node_id=node_id,
            title=f"{node_id} has room for models in demand",
            detail=f"{node_id} has {available:.1f} GB of memory available while "
            f"{'; '.join(demand)}.{share}",
            advice=", ".join(steps) + ".",
            data={"available_gb": available, "models": unmet})


def weights(nodes: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Each model's size on disk, as any node reports it (the largest where they differ)."""
    sizes: dict[str, float] = {}
    for node in nodes:
        for endpoint in node.get("endpoints", ()):
            for name, size in (endpoint.get("models_available_gb") or {}).items():
                key = normalize_model(name)
                if size and size > sizes.get(key, 0.0):
                    sizes[key] = float(size)
    return sizes


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_health_checks(config: Config) -> Sequence[HealthCheck]:
    check = UnderutilizedCheck(free_gb=config["FLEET_HEALTH_UNDERUTILIZED_FREE_GB"],
                               min_cold_loads=config["FLEET_HEALTH_UNDERUTILIZED_MIN_COLD_LOADS"],
                               min_waiting=config["FLEET_HEALTH_UNDERUTILIZED_MIN_WAITING"])
    return [check]
