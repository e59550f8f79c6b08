"""Health check ``high_error_rate``: a node that failed a large share of its requests in the last
hour (warning, critical above a higher share), judged only on a minimum sample; a share that was
high today but is not in the last hour is shown as info."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from attrs import frozen

from herd_kernel.api import Finding, HealthSnapshot, Severity, Tally
from herd_kernel.config import Config, Setting, SettingError
from herd_kernel.hookspecs import hookimpl

SETTINGS = (
    Setting(env="FLEET_HEALTH_ERROR_RATE_MIN_REQUESTS", type=int, default=10,
            help="Requests a node (or the fleet) must have finished in a window before the "
            "high_error_rate check judges its share of failures there."),
    Setting(env="FLEET_HEALTH_ERROR_RATE_WARNING_PCT", type=float, bounds="(0, 100]", default=10.0,
            help="Share of a node's requests that failed in the last hour (percent) at which the "
            "high_error_rate check warns."),
    Setting(env="FLEET_HEALTH_ERROR_RATE_CRITICAL_PCT", type=float, bounds="(0, 100]", default=30.0,
            help="Share of a node's requests that failed in the last hour (percent) at which the "
            "high_error_rate check is critical."),
)


@frozen(kw_only=True)
class ErrorRateCheck:
    id = "high_error_rate"
    title = "High error rate"

    min_requests: int
    warning: float  # fractions of the requests
    critical: float

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ErrorRateCheck:
        warning = config["FLEET_HEALTH_ERROR_RATE_WARNING_PCT"]
        critical = config["FLEET_HEALTH_ERROR_RATE_CRITICAL_PCT"]
        if not 0 < warning <= critical <= 100:
            raise SettingError(
                "FLEET_HEALTH_ERROR_RATE_WARNING_PCT and FLEET_HEALTH_ERROR_RATE_CRITICAL_PCT must "
                f"satisfy 0 < warning <= critical <= 100 (got {warning:g} and {critical:g})")
        return cls(min_requests=max(1, config["FLEET_HEALTH_ERROR_RATE_MIN_REQUESTS"]),
                   warning=warning / 100, critical=critical / 100)

    def severity(self, tally: Tally) -> Severity | None:
        if tally.requests < self.min_requests:
            return None  # too few to judge a share
        rate = tally.failed / tally.requests
        return "critical" if rate >= self.critical else "warning" if rate >= self.warning else None

    def evaluate(self, snapshot: HealthSnapshot) -> list[Finding]:
        hour, day = snapshot.hour, snapshot.day
        nodes = {node["node_id"]: node for node in snapshot.status.get("nodes", ())}
        findings = []
        for node_id in sorted({*hour.by_node, *day.by_node}):
            now, today = hour.by_node.get(node_id, Tally()), day.by_node.get(node_id, Tally())
            severity = self.severity(now)
            if severity is not None:
                findings.append(self.active(node_id, now, today, severity, nodes.get(node_id)))
            elif self.severity(today) is not None:
                findings.append(self.earlier(node_id, now, today))
        if not any(f.severity != "info" for f in findings):
            severity = self.severity(hour.total)
            if severity is not None:
                findings.append(self.fleet_wide(hour.total, hour.by_node.values(), severity))
        return findings

    def thresholds(self) -> str:
        return f"warning at {self.warning:.0%}, critical at {self.critical:.0%}"

    def active(self, node_id: str, now: Tally, today: Tally, severity: Severity,
               node: Mapping[str, Any] | None) -> Finding:
        state = ""
        if node is not None and node.get("status") not in (None, "online"):
            state += f" It is {node['status']} now."
        pressure = ((node or {}).get("memory") or {}).get("pressure", "normal")
        if pressure != "normal":
            state += f" Its memory pressure is {pressure}."
        return Finding(
            check_id=self.id, severity=severity, node_id=node_id,
            title=f"{node_id} fails {now.failed / now.requests:.0%} of its requests",
            detail=f"{node_id} failed {now.failed} of {now.requests} requests "
                   f"({now.failed / now.requests:.0%}) in the last hour ({self.thresholds()}); "
                   f"{today.failed} of {today.requests} today.{state}",
            advice=f"Read the error_message of {node_id}'s failed requests (GET /fleet/traces) and "
                   "its engine's log: an engine that crashed or keeps restarting, a model too big "
                   "for its memory or a full disk are the usual causes. Until it is fixed, stop "
                   "its herd-node agent (it drains first) so requests go to other nodes.",
            data={"window": "hour", "requests": now.requests, "failed": now.failed,
                  "rate": round(now.failed / now.requests, 4), "day_requests": today.requests,
                  "day_failed": today.failed})

    def earlier(self, node_id: str, now: Tally, today: Tally) -> Finding:
        resolved = now.requests >= self.min_requests
        if resolved:
            since = f"but {now.failed} of {now.requests} in the last hour: it looks resolved"
        else:
            since = (f"and {now.failed} of {now.requests} in the last hour, too few to tell "
                     f"whether it is resolved ({self.min_requests} needed)")
        return Finding(
            check_id=self.id, severity="info", node_id=node_id,
            title=f"{node_id} failed many requests earlier today"
                  + (" (resolved)" if resolved else ""),
            detail=f"{node_id} failed {today.failed} of {today.requests} requests "
                   f"({today.failed / today.requests:.0%}) today, {since}.",
            advice="Nothing to do while it stays quiet; the error_message of today's failed "
                   "requests (table request_traces in latency.db, in the data directory) says "
                   "what happened.",
            data={"window": "day", "requests": today.requests, "failed": today.failed,
                  "rate": round(today.failed / today.requests, 4), "resolved": resolved,
                  "hour_requests": now.requests, "hour_failed": now.failed})

    def fleet_wide(self, total: Tally, by_node: Iterable[Tally], severity: Severity) -> Finding:
        # requests that failed on every node tried are counted for no node
        nowhere = total.failed - sum(tally.failed for tally in by_node)
        where = f"; {nowhere} of them failed on every node they were tried on" if nowhere else ""
        return Finding(
            check_id=self.id, severity=severity,
            title=f"The fleet fails {total.failed / total.requests:.0%} of its requests",
            detail=f"{total.failed} of {total.requests} requests "
                   f"({total.failed / total.requests:.0%}) failed across the fleet in the last "
                   f"hour ({self.thresholds()}), spread over nodes that are each below the "
                   f"threshold or their {self.min_requests}-request sample{where}.",
            advice="Read the error_message of the failed requests (GET /fleet/traces): failures on "
                   "every node at once point at the request or the model (a model no node can "
                   "load, a context too large) rather than at one machine.",
            data={"window": "hour", "requests": total.requests, "failed": total.failed,
                  "rate": round(total.failed / total.requests, 4), "unattributed": nowhere})


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_health_checks(config: Config) -> Sequence[ErrorRateCheck]:
    return [ErrorRateCheck.from_config(config)]
