"""Health check ``kv_cache_bloat``: a loaded model whose memory beyond its weights (the context's
KV cache, which Ollama sizes as num_ctx times OLLAMA_NUM_PARALLEL) is a large share of the loaded
model or of the node's memory."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from herd_kernel.api import Finding, HealthCheck, HealthSnapshot
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl
from herd_kernel.models import normalize_model

SETTINGS = (
    Setting(env="FLEET_HEALTH_KV_CACHE_MIN_GB", type=float, default=2.0,
            help="Memory (GB) a loaded model must hold beyond its weights before the "
            "kv_cache_bloat health check looks at it at all."),
    Setting(env="FLEET_HEALTH_KV_CACHE_MODEL_SHARE", type=float, bounds="(0, 1]", default=0.5,
            help="Share of a loaded model's memory that is context cache at which the "
            "kv_cache_bloat health check reports it (info; a warning when the node is short of "
            "memory)."),
    Setting(env="FLEET_HEALTH_KV_CACHE_NODE_SHARE", type=float, bounds="(0, 1]", default=0.2,
            help="Share of the node's memory one model's context cache may take before the "
            "kv_cache_bloat health check warns."),
)


class KvCacheCheck:
    id = "kv_cache_bloat"
    title = "Context cache bloat"

    def __init__(self, min_gb: float, model_share: float, node_share: float) -> None:
        self.min_gb, self.model_share, self.node_share = min_gb, model_share, node_share

    def evaluate(self, snapshot: HealthSnapshot) -> Sequence[Finding]:
        findings = []
        for node in snapshot.status.get("nodes", ()):
            if node.get("status") not in ("online", "degraded"):
                continue
            for endpoint in node.get("endpoints", ()):
                disk = {normalize_model(name): float(size or 0.0) for name, size in
                        (endpoint.get("models_available_gb") or {}).items()}
                for model in endpoint.get("models_loaded", ()):
                    weights = disk.get(normalize_model(model.get("name", "")), 0.0)
                    finding = self.judge(node, endpoint, model, weights) if weights else None
                    if finding is not None:
                        findings.append(finding)
        return findings

    def judge(self, node: Mapping[str, Any], endpoint: Mapping[str, Any],
              model: Mapping[str, Any], weights: float) -> Finding | None:
        loaded = float(model.get("size_gb") or 0.0)
        cache = loaded - weights
        if cache < self.min_gb:
            return None
        memory = node.get("memory") or {}
        total = float(memory.get("total_gb") or 0.0)
        of_model, of_node = cache / loaded, (cache / total if total else 0.0)
        short = memory.get("pressure", "normal") != "normal"
        if of_node >= self.node_share or (short and of_model >= self.model_share):
            severity = "warning"
        elif of_model >= self.model_share:
            severity = "info"
        else:
            return None
        node_id, name = node["node_id"], model.get("name", "?")
        context = int(model.get("context_length") or 0)
        parallel = int(endpoint.get("num_parallel") or 0)
        sized_by = (f"num_ctx {context}" if context else "its context") + (
            f" x {parallel} parallel slots (OLLAMA_NUM_PARALLEL)" if parallel > 1 else "")
        node_part = f", {of_node:.0%} of {node_id}'s {total:.0f} GB" if total else ""
        pressure = f" {node_id} reports memory pressure '{memory.get('pressure')}'." if short else ""
        fixes = [f"lower OLLAMA_NUM_PARALLEL on {node_id} (now {parallel})"] if parallel > 1 else []
        fixes.append(f"have clients send a smaller num_ctx for {name}"
                     + (f" (loaded with {context})" if context else ""))
        fixes.append("set OLLAMA_KV_CACHE_TYPE=q8_0 with OLLAMA_FLASH_ATTENTION=1 there to "
                     "halve the cache")
        return Finding(
            check_id=self.id, severity=severity, node_id=node_id,
            title=f"{name} on {node_id}: {cache:.1f} GB of context cache",
            detail=f"{name} on {node_id} holds {loaded:.1f} GB loaded for {weights:.1f} GB of "
            f"weights: {cache:.1f} GB ({of_model:.0%} of it{node_part}) is context cache, sized "
            f"by {sized_by}.{pressure}",
            advice="To give that memory back, " + ", or ".join(fixes)
            + f" (Ollama reads its settings when it restarts on {node_id}).",
            data={"model": name, "loaded_gb": loaded, "weights_gb": weights,
                  "cache_gb": round(cache, 3), "cache_share_of_model": round(of_model, 3),
                  "cache_share_of_node": round(of_node, 3), "context_length": context,
                  "num_parallel": parallel})


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_health_checks(config: Config) -> Sequence[HealthCheck]:
    check = KvCacheCheck(min_gb=config["FLEET_HEALTH_KV_CACHE_MIN_GB"],
                         model_share=config["FLEET_HEALTH_KV_CACHE_MODEL_SHARE"],
                         node_share=config["FLEET_HEALTH_KV_CACHE_NODE_SHARE"])
    return [check]
