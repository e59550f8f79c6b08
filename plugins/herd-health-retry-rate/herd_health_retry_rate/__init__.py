"""Health check ``high_retry_rate``: requests that needed another node before one answered them,
per node and fleet-wide, once their share of the last hour's requests passes a threshold."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from attrs import frozen

from herd_kernel.api import Finding, HealthSnapshot, Tally
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl

SETTINGS = (
    Setting(env="FLEET_HEALTH_RETRY_RATE_MIN_REQUESTS", type=int, default=20,
            help="Requests a node (or the fleet) must have in the last hour before the "
            "high_retry_rate check judges the share of them that needed another node."),
    Setting(env="FLEET_HEALTH_RETRY_RATE_PCT", type=float, bounds="(0, 100]", default=10.0,
            help="Share of the last hour's requests (percent) that needed another node at which "
            "the high_retry_rate check warns."),
)


@frozen(kw_only=True)
class RetryRateCheck:
    id = "high_retry_rate"
    title = "Requests retried on another node"

    min_requests: int
    share: float  # fraction of the requests

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RetryRateCheck:
        pct = config["FLEET_HEALTH_RETRY_RATE_PCT"]
        return cls(min_requests=max(1, config["FLEET_HEALTH_RETRY_RATE_MIN_REQUESTS"]),
                   share=pct / 100)

    def exceeded(self, tally: Tally) -> bool:
        return tally.requests >= self.min_requests and tally.retried / tally.requests >= self.share

    def evaluate(self, snapshot: HealthSnapshot) -> list[Finding]:
        findings = [self.finding(tally, node_id)
                    for node_id, tally in sorted(snapshot.hour.by_node.items())
                    if self.exceeded(tally)]
        if not findings and self.exceeded(snapshot.hour.total):
            findings.append(self.finding(snapshot.hour.total, None))
        return findings

    def finding(self, tally: Tally, node_id: str | None) -> Finding:
        where = f"counted for {node_id}" if node_id else "across the fleet"
        return Finding(
            check_id=self.id, severity="warning", node_id=node_id,
            title=f"{tally.retried / tally.requests:.0%} of requests {where} needed another node",
            detail=f"{tally.retried} of {tally.requests} requests {where} in the last hour "
                   f"({tally.retried / tally.requests:.0%}; the check warns from "
                   f"{self.share:.0%} of at least {self.min_requests} requests) failed on a node "
                   f"before anything reached the client and were sent to another, "
                   f"{tally.retries} extra attempts in all. Each retry costs the client the "
                   "failed attempt's wait.",
            advice="The attempts of these requests (GET /fleet/traces, field attempts) name the "
                   "node that failed first and why: check that node's engine and memory, or stop "
                   "its herd-node agent until it is fixed.",
            data={"requests": tally.requests, "retried": tally.retried, "retries": tally.retries,
                  "rate": round(tally.retried / tally.requests, 4)})


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_health_checks(config: Config) -> Sequence[RetryRateCheck]:
    return [RetryRateCheck.from_config(config)]
