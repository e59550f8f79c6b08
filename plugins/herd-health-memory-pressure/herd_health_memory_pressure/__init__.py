"""Health check ``memory_pressure``: nodes whose operating system reports memory pressure, or that
have pushed a large share of their RAM out to swap (models then run at disk speed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from herd_kernel.api import Finding, HealthCheck, HealthSnapshot, Severity
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl

SETTINGS = (
    Setting(env="FLEET_HEALTH_MEMORY_PRESSURE_SWAP_FRACTION", type=float, bounds="(0, )",
            default=0.25,
            help="Swap in use, as a fraction of the node's RAM, at which the memory_pressure "
            "health check warns even when the node reports no pressure (0.25: a quarter)."),
)

PRESSURE: Mapping[str, Severity] = {"warn": "warning", "critical": "critical"}


class MemoryPressureCheck:
    id = "memory_pressure"
    title = "Memory pressure"

    def __init__(self, swap_fraction: float) -> None:
        self.swap_fraction = swap_fraction

    def evaluate(self, snapshot: HealthSnapshot) -> Sequence[Finding]:
        findings = []
        for node in snapshot.status.get("nodes", ()):
            # an offline node's last reading is stale: node_offline speaks for it
            if node.get("status") in ("online", "degraded"):
                finding = self.judge(node)
                if finding is not None:
                    findings.append(finding)
        return findings

    def judge(self, node: Mapping[str, Any]) -> Finding | None:
        memory = node.get("memory") or {}
        total = float(memory.get("total_gb") or 0.0)
        pressure = str(memory.get("pressure", "normal"))
        swap = float(memory.get("swap_used_gb") or 0.0)
        swap_share = swap / total if total else 0.0
        deep_in_swap = total > 0 and swap_share >= self.swap_fraction
        if pressure not in PRESSURE and not deep_in_swap:
            return None
        node_id = node["node_id"]
        severity = PRESSURE.get(pressure, "warning")
        reasons = []
        if pressure in PRESSURE:
            reasons.append(f"reports memory pressure '{pressure}'")
        if deep_in_swap:
            reasons.append(f"has {swap:.1f} GB in swap ({swap_share:.0%} of its RAM, the "
                           f"threshold is {self.swap_fraction:.0%})")
        loaded = sorted(((m.get("name", "?"), float(m.get("size_gb") or 0.0))
                         for e in node.get("endpoints", ()) for m in e.get("models_loaded", ())),
                        key=lambda item: -item[1])
        held = ", ".join(f"{name} {size:.1f} GB" for name, size in loaded) or "none"
        return Finding(
            check_id=self.id, severity=severity, node_id=node_id,
            title=f"{node_id} is short of memory",
            detail=f"{node_id} {' and '.join(reasons)}: {float(memory.get('used_gb') or 0):.1f} "
            f"of {total:.1f} GB used, {float(memory.get('available_gb') or 0):.1f} GB available. "
            f"Models loaded: {held}.",
            advice=f"Free memory on {node_id}: unload models it does not need (`ollama stop "
            "NAME`), lower OLLAMA_MAX_LOADED_MODELS or OLLAMA_NUM_PARALLEL there, use a smaller "
            "quantization or num_ctx, or close other programs using the memory.",
            data={"pressure": pressure, "total_gb": total, "used_gb": memory.get("used_gb"),
                  "available_gb": memory.get("available_gb"), "swap_used_gb": swap,
                  "swap_fraction": round(swap_share, 3), "models_loaded": dict(loaded)})


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_health_checks(config: Config) -> Sequence[HealthCheck]:
    return [MemoryPressureCheck(config["FLEET_HEALTH_MEMORY_PRESSURE_SWAP_FRACTION"])]
