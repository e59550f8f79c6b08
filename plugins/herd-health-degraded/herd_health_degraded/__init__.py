"""Health check ``node_degraded``: nodes still listed as up whose heartbeats are late, or whose
agent reports that none of its engines answers (the router can send such a node nothing)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from herd_kernel.api import Finding, HealthCheck, HealthSnapshot
from herd_kernel.config import Config
from herd_kernel.hookspecs import hookimpl


class DegradedCheck:
    id = "node_degraded"
    title = "Nodes degraded"

    def __init__(self, late_after: float, offline_after: float) -> None:
        self.late_after, self.offline_after = late_after, offline_after

    def evaluate(self, snapshot: HealthSnapshot) -> Sequence[Finding]:
        findings = []
        for node in snapshot.status.get("nodes", ()):
            if node.get("status") == "degraded":
                findings.append(self.late(node))
            elif node.get("status") == "online" and not node.get("paused"):
                endpoints = node.get("endpoints", ())
                if endpoints and not any(e.get("healthy", True) for e in endpoints):
                    findings.append(self.engines_down(node, endpoints))
        return findings

    def late(self, node: Mapping[str, Any]) -> Finding:
        node_id = node["node_id"]
        silent = float(node.get("last_heartbeat_s_ago") or 0.0)
        cpu = (node.get("cpu") or {}).get("utilization_pct")
        busy = f" Its last reading showed the CPU {cpu:.0f}% busy." if cpu is not None else ""
        return Finding(
            check_id=self.id, severity="warning", node_id=node_id,
            title=f"{node_id}'s heartbeats are late",
            detail=f"No heartbeat from {node_id} for {silent:.0f} s: the router marks a node "
            f"degraded after {self.late_after:g} s of silence and offline after "
            f"{self.offline_after:g} s, when it stops getting work.{busy}",
            advice=f"{node_id} is slow to report: it may be overloaded, going to sleep, or on a "
            "weak network link (Wi-Fi). Check the machine and its herd-node log; on a slow link, "
            "raise FLEET_HEARTBEAT_TIMEOUT.",
            data={"last_heartbeat_s_ago": round(silent, 1), "cpu_pct": cpu,
                  "degraded_after_s": self.late_after, "offline_after_s": self.offline_after})

    def engines_down(self, node: Mapping[str, Any], endpoints: Sequence[Mapping[str, Any]]
                     ) -> Finding:
        node_id = node["node_id"]
        where = ", ".join(f"{e.get('kind')} at {e.get('url')}" for e in endpoints)
        return Finding(
            check_id=self.id, severity="warning", node_id=node_id,
            title=f"No engine answers on {node_id}",
            detail=f"{node_id}'s agent is up but reports that none of its engines answers "
            f"({where}); the router sends it nothing.",
            advice=f"Start or restart the engine on {node_id} (for Ollama: the Ollama app or "
            "`ollama serve`) and check that it listens at that address.",
            data={"endpoints": [{"kind": e.get("kind"), "url": e.get("url")} for e in endpoints]})


@hookimpl
def herd_health_checks(config: Config) -> Sequence[HealthCheck]:
    return [DegradedCheck(late_after=config["FLEET_HEARTBEAT_TIMEOUT"],
                          offline_after=config["FLEET_HEARTBEAT_OFFLINE"])]
