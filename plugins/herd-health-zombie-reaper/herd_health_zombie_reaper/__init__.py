"""Health check ``zombie_reaper``: requests the reaper ended on a node because they made no
progress for FLEET_STALE_TIMEOUT seconds (the ``reaped`` routing event), in the last hour and
earlier today."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from attrs import frozen

from herd_kernel.api import Finding, HealthSnapshot, Severity
from herd_kernel.config import Config, Setting, SettingError
from herd_kernel.hookspecs import hookimpl

SETTINGS = (
    Setting(env="FLEET_HEALTH_ZOMBIE_REAPER_WARNING", type=int, bounds="[1, )", default=1,
            help="Requests the reaper ended on one node in the last hour at which the "
            "zombie_reaper check warns."),
    Setting(env="FLEET_HEALTH_ZOMBIE_REAPER_CRITICAL", type=int, bounds="[1, )", default=5,
            help="Requests the reaper ended on one node in the last hour at which the "
            "zombie_reaper check is critical."),
)


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@frozen(kw_only=True)
class ZombieReaperCheck:
    id = "zombie_reaper"
    title = "Requests ended by the reaper"

    warning: int
    critical: int
    stale_timeout: float  # FLEET_STALE_TIMEOUT: how long a reaped request had been silent

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ZombieReaperCheck:
        warning = config["FLEET_HEALTH_ZOMBIE_REAPER_WARNING"]
        critical = config["FLEET_HEALTH_ZOMBIE_REAPER_CRITICAL"]
        if not 1 <= warning <= critical:
            raise SettingError(
                "FLEET_HEALTH_ZOMBIE_REAPER_WARNING and FLEET_HEALTH_ZOMBIE_REAPER_CRITICAL must "
                f"satisfy 1 <= warning <= critical (got {warning} and {critical})")
        return cls(warning=warning, critical=critical,
                   stale_timeout=config["FLEET_STALE_TIMEOUT"])

    def evaluate(self, snapshot: HealthSnapshot) -> list[Finding]:
        hour, day = snapshot.hour.node_events, snapshot.day.node_events
        since = snapshot.now - snapshot.hour.seconds
        findings = []
        for node_id in sorted({*hour, *day}):
            now = hour.get(node_id, {}).get("reaped", 0)
            today = day.get(node_id, {}).get("reaped", 0)
            if now >= self.warning:
                models = Counter(e.get("model", "?") for e in snapshot.events
                                 if e.get("kind") == "reaped" and e.get("node_id") == node_id
                                 and e.get("timestamp", 0) >= since)
                severity: Severity = "critical" if now >= self.critical else "warning"
                findings.append(self.active(node_id, now, today, models, severity))
            elif today >= self.warning:
                findings.append(self.earlier(node_id, now, today))
        return findings

    def active(self, node_id: str, now: int, today: int, models: Counter[str],
               severity: Severity) -> Finding:
        which = ", ".join(f"{model} ({n})" for model, n in models.most_common(3))
        return Finding(
            check_id=self.id, severity=severity, node_id=node_id,
            title=f"Requests hang on {node_id}",
            detail=f"The reaper ended {counted(now, 'request')} on {node_id} in the last hour, "
                   f"each after {self.stale_timeout:g} s without a byte from the node "
                   f"(FLEET_STALE_TIMEOUT; the check warns from {self.warning}, critical from "
                   f"{self.critical}); {today} today." + (f" Models: {which}." if which else ""),
            advice=f"A node that stops sending mid-request usually has a stuck engine: look in "
                   f"{node_id}'s engine log for GPU or memory errors and restart the engine "
                   "(systemctl restart ollama, or quit and reopen the Ollama app). If its answers "
                   "are only slow to begin (long non-streamed answers), raise FLEET_STALE_TIMEOUT.",
            data={"reaped": now, "day_reaped": today, "models": dict(models)})

    def earlier(self, node_id: str, now: int, today: int) -> Finding:
        return Finding(
            check_id=self.id, severity="info", node_id=node_id,
            title=f"Requests hung on {node_id} earlier today"
                  + (" (resolved)" if now == 0 else ""),
            detail=f"The reaper ended {counted(today, 'request')} on {node_id} today, {now} of "
                   f"them in the last hour, each after {self.stale_timeout:g} s without a byte "
                   "from the node.",
            advice=f"Nothing to do while it stays quiet; if it comes back, look in {node_id}'s "
                   "engine log for GPU or memory errors around those times.",
            data={"reaped": now, "day_reaped": today})


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_health_checks(config: Config) -> Sequence[ZombieReaperCheck]:
    return [ZombieReaperCheck.from_config(config)]
