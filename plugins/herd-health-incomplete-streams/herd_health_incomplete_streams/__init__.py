"""Health check ``incomplete_streams``: streamed answers that broke after their first bytes had
reached the client (too late to retry on another node), per node in the last hour."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from attrs import frozen

from herd_kernel.api import Finding, HealthSnapshot, Tally
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl

SETTINGS = (
    Setting(env="FLEET_HEALTH_INCOMPLETE_STREAMS_MIN_COUNT", type=int, default=2,
            help="Streams broken after their first bytes on one node in the last hour at which "
            "the incomplete_streams check warns (one alone can be an engine being restarted)."),
)


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@frozen(kw_only=True)
class IncompleteStreamCheck:
    id = "incomplete_streams"
    title = "Streams broken mid-answer"

    min_count: int

    def evaluate(self, snapshot: HealthSnapshot) -> list[Finding]:
        nodes = {node["node_id"]: node for node in snapshot.status.get("nodes", ())}
        return [self.finding(node_id, tally, snapshot.day.by_node.get(node_id, Tally()),
                             nodes.get(node_id) or {})
                for node_id, tally in sorted(snapshot.hour.by_node.items())
                if tally.incomplete_streams >= self.min_count]

    def finding(self, node_id: str, hour: Tally, day: Tally, node: Mapping[str, Any]) -> Finding:
        broken = hour.incomplete_streams
        now = []
        if node.get("status") not in (None, "online"):
            now.append(f"it is {node['status']}")
        memory = node.get("memory") or {}
        if memory.get("pressure", "normal") != "normal":
            now.append(f"its memory pressure is {memory['pressure']} ({memory.get('used_gb', 0):g}"
                       f" of {memory.get('total_gb', 0):g} GB used)")
        return Finding(
            check_id=self.id, severity="warning", node_id=node_id,
            title=f"Answers from {node_id} break off mid-stream",
            detail=f"{counted(broken, 'streamed answer')} from {node_id} broke after their "
                   f"first bytes had reached the client in the last hour ({broken} of its "
                   f"{hour.requests} requests; the check warns from {self.min_count}); "
                   f"{day.incomplete_streams} today. The clients got half an answer and an error."
                   + (f" Now {' and '.join(now)}." if now else ""),
            advice=f"The engine on {node_id} most likely crashed or ran out of memory while "
                   "answering: look in its log (journalctl -u ollama on Linux, "
                   "~/.ollama/logs/server.log on macOS) for a crash or an out-of-memory kill, "
                   "then serve smaller models or shorter contexts there, or give it more memory.",
            data={"incomplete_streams": broken, "requests": hour.requests,
                  "day_incomplete_streams": day.incomplete_streams})


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_health_checks(config: Config) -> Sequence[IncompleteStreamCheck]:
    return [IncompleteStreamCheck(
        min_count=max(1, config["FLEET_HEALTH_INCOMPLETE_STREAMS_MIN_COUNT"]))]
