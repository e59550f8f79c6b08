"""Health check ``node_offline``: admitted nodes the router no longer hears from, when each was last
seen, and which models no other node can serve while it is gone."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from herd_kernel.api import Finding, HealthCheck, HealthSnapshot
from herd_kernel.config import Config
from herd_kernel.hookspecs import hookimpl
from herd_kernel.models import normalize_model

NAMED_AT_MOST = 5  # models listed by name in the detail; the rest are counted


def age(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3 h 05 min``, ``2 d 4 h``: how long ago, for a person."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    return f"{hours // 24} d {hours % 24} h"


def model_names(node: Mapping[str, Any]) -> set[str]:
    return {normalize_model(name) for endpoint in node.get("endpoints", ())
            for name in endpoint.get("models_available", ())}


class OfflineCheck:
    id = "node_offline"
    title = "Nodes offline"

    def evaluate(self, snapshot: HealthSnapshot) -> Sequence[Finding]:
        nodes = snapshot.status.get("nodes", ())
        online = [n for n in nodes if n.get("status") in ("online", "degraded")]
        elsewhere = set().union(*(model_names(n) for n in online))
        return [self.finding(node, snapshot, elsewhere) for node in nodes
                if node.get("status") == "offline"]

    def finding(self, node: Mapping[str, Any], snapshot: HealthSnapshot,
                elsewhere: set[str]) -> Finding:
        node_id = node["node_id"]
        silent = float(node.get("last_heartbeat_s_ago") or 0.0)
        seen_at = datetime.fromtimestamp(snapshot.now - silent, UTC).strftime("%Y-%m-%d %H:%M UTC")
        served = snapshot.hour.by_node.get(node_id)
        only_here = sorted(model_names(node) - elsewhere)
        data = {"last_seen_s_ago": round(silent, 1), "last_seen_at": snapshot.now - silent,
                "draining": bool(node.get("draining")), "only_here": only_here,
                "requests_last_hour": served.requests if served else 0}
        consequence = ""
        if only_here:
            listed = ", ".join(only_here[:NAMED_AT_MOST])
            if len(only_here) > NAMED_AT_MOST:
                listed += f" and {len(only_here) - NAMED_AT_MOST} more"
            consequence = f" No online node has {listed}: requests for them fail until it is back."
        if served and served.requests:
            consequence += f" It served {served.requests} requests in the last hour."
        if node.get("draining"):
            # the agent said it was stopping: an owner's choice, worth knowing, not an alarm
            severity, title = "info", f"{node_id} was stopped"
            detail = (f"{node_id}'s agent said it was shutting down (draining); last heard from "
                      f"{age(silent)} ago ({seen_at}).")
            advice = (f"Nothing to do if it was stopped on purpose; start herd-node on {node_id} "
                      "to bring it back.")
        else:
            severity, title = "critical", f"{node_id} is offline"
            detail = (f"No heartbeat from {node_id} for {age(silent)} (last seen {seen_at}); it "
                      "gets no requests.")
            advice = (f"Check that {node_id} is awake (not asleep or shut down) and on the "
                      "network, and that its herd-node agent is running; it rejoins with its "
                      "next heartbeat.")
        return Finding(check_id=self.id, severity=severity, node_id=node_id, title=title,
                       detail=detail + consequence, advice=advice, data=data)


@hookimpl
def herd_health_checks(config: Config) -> Sequence[HealthCheck]:
    return [OfflineCheck()]
