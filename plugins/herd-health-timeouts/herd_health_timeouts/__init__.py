"""Health check ``request_timeouts``: requests with an attempt that timed out (connecting, waiting
for bytes, or making no progress) in the last hour, per node and per model, once both their
count and their share of the requests pass a threshold."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from attrs import frozen

from herd_kernel.api import Finding, HealthSnapshot, Tally
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl

SETTINGS = (
    Setting(env="FLEET_HEALTH_TIMEOUTS_MIN_COUNT", type=int, default=3,
            help="Timed-out requests a node or a model needs in the last hour before the "
            "request_timeouts check speaks (the sample its share is judged on)."),
    Setting(env="FLEET_HEALTH_TIMEOUTS_PCT", type=float, bounds="(0, 100]", default=5.0,
            help="Share of a node's or a model's requests in the last hour (percent) with an "
            "attempt that timed out at which the request_timeouts check warns."),
)


@frozen(kw_only=True)
class TimeoutCheck:
    id = "request_timeouts"
    title = "Request timeouts"

    min_count: int
    share: float  # fraction of the requests
    read_timeout: float  # FLEET_READ_TIMEOUT, named in the advice

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TimeoutCheck:
        pct = config["FLEET_HEALTH_TIMEOUTS_PCT"]
        return cls(min_count=max(1, config["FLEET_HEALTH_TIMEOUTS_MIN_COUNT"]), share=pct / 100,
                   read_timeout=config["FLEET_READ_TIMEOUT"])

    def exceeded(self, tally: Tally) -> bool:
        return (tally.timeouts >= self.min_count and tally.requests > 0
                and tally.timeouts / tally.requests >= self.share)

    def evaluate(self, snapshot: HealthSnapshot) -> list[Finding]:
        nodes = {node["node_id"]: node for node in snapshot.status.get("nodes", ())}
        findings = [self.on_node(node_id, tally, snapshot.day.by_node.get(node_id, Tally()),
                                 nodes.get(node_id))
                    for node_id, tally in sorted(snapshot.hour.by_node.items())
                    if self.exceeded(tally)]
        findings += [self.on_model(model, tally, snapshot.day.by_model.get(model, Tally()))
                     for model, tally in sorted(snapshot.hour.by_model.items())
                     if self.exceeded(tally)]
        return findings

    def counts(self, hour: Tally, day: Tally) -> str:
        return (f"{hour.timeouts} of {hour.requests} requests ({hour.timeouts / hour.requests:.0%})"
                " in the last hour had an attempt time out (connecting, waiting for bytes, or "
                f"making no progress; thresholds: {self.min_count} timeouts and "
                f"{self.share:.0%}); {day.timeouts} today.")

    def on_node(self, node_id: str, hour: Tally, day: Tally,
                node: Mapping[str, Any] | None) -> Finding:
        state = ""
        if node is not None and node.get("status") not in (None, "online"):
            state = f" {node_id} is {node['status']} now."
        return Finding(
            check_id=self.id, severity="warning", node_id=node_id,
            title=f"Requests time out on {node_id}",
            detail=f"On {node_id}, {self.counts(hour, day)}{state}",
            advice=f"Check {node_id}: is its engine running and answering (ollama ps there), is "
                   "it short of memory or busy with other work? If only large models time out "
                   "there, keep them loaded (OLLAMA_KEEP_ALIVE) or raise FLEET_READ_TIMEOUT "
                   f"(now {self.read_timeout:g} s).",
            data={"requests": hour.requests, "timeouts": hour.timeouts,
                  "rate": round(hour.timeouts / hour.requests, 4), "day_timeouts": day.timeouts})

    def on_model(self, model: str, hour: Tally, day: Tally) -> Finding:
        cold = (f" {hour.cold_loads} of its answered requests waited for it to load."
                if hour.cold_loads else "")
        return Finding(
            check_id=self.id, severity="warning",
            title=f"Requests for {model} time out",
            detail=f"For {model}, {self.counts(hour, day)}{cold}",
            advice=f"Keep {model} loaded on the nodes that serve it (OLLAMA_KEEP_ALIVE=-1 or a "
                   "long duration) so requests do not wait for it to load; if it is slow to "
                   f"answer even when loaded, raise FLEET_READ_TIMEOUT (now {self.read_timeout:g}"
                   " s) or serve it from a faster machine.",
            data={"model": model, "requests": hour.requests, "timeouts": hour.timeouts,
                  "rate": round(hour.timeouts / hour.requests, 4), "day_timeouts": day.timeouts,
                  "cold_loads": hour.cold_loads})


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_health_checks(config: Config) -> Sequence[TimeoutCheck]:
    return [TimeoutCheck.from_config(config)]
