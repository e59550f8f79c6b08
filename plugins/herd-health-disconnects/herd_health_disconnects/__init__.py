"""Health check ``client_disconnects``: clients that left before their answer was complete, as a
share of the fleet's requests in the last hour, judged on a minimum sample."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from attrs import frozen

from herd_kernel.api import Finding, HealthSnapshot, Tally
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl

SETTINGS = (
    Setting(env="FLEET_HEALTH_DISCONNECTS_MIN_REQUESTS", type=int, default=20,
            help="Requests the fleet must have in the last hour before the client_disconnects "
            "check judges the share whose client left before the answer."),
    Setting(env="FLEET_HEALTH_DISCONNECTS_PCT", type=float, bounds="(0, 100]", default=15.0,
            help="Share of the last hour's requests (percent) whose client left before the "
            "answer was complete at which the client_disconnects check warns (a chat UI's stop "
            "button counts too, so some is normal)."),
)


def most_left(tallies: Mapping[str, Tally], limit: int = 3) -> str:
    """``"a (5 of 8), b (2 of 30)"``: where most clients left, most first."""
    worst = sorted(((t.client_disconnects, key, t.requests) for key, t in tallies.items()
                    if t.client_disconnects), key=lambda row: (-row[0], row[1]))[:limit]
    return ", ".join(f"{key} ({left} of {requests})" for left, key, requests in worst)


@frozen(kw_only=True)
class DisconnectCheck:
    id = "client_disconnects"
    title = "Clients leaving before the answer"

    min_requests: int
    share: float  # fraction of the requests

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DisconnectCheck:
        pct = config["FLEET_HEALTH_DISCONNECTS_PCT"]
        return cls(min_requests=max(1, config["FLEET_HEALTH_DISCONNECTS_MIN_REQUESTS"]),
                   share=pct / 100)

    def evaluate(self, snapshot: HealthSnapshot) -> list[Finding]:
        hour = snapshot.hour
        total = hour.total
        if total.requests < self.min_requests \
                or total.client_disconnects / total.requests < self.share:
            return []
        rate = total.client_disconnects / total.requests
        where = [f"{kind} {names}" for kind, names in (
            ("models", most_left(hour.by_model)), ("nodes", most_left(hour.by_node))) if names]
        said = f" Where they left: {'; '.join(where)}." if where else ""
        if total.ttft_count:
            said += (f" Answers that began took {total.ttft_ms_sum / total.ttft_count / 1000:.1f} s"
                     " on average to start.")
        return [Finding(
            check_id=self.id, severity="warning",
            title=f"{rate:.0%} of clients left before their answer",
            detail=f"{total.client_disconnects} of {total.requests} requests ({rate:.0%}) in the "
                   "last hour ended with the client gone before the answer was complete (the "
                   f"check warns from {self.share:.0%} of at least {self.min_requests} requests); "
                   f"{snapshot.day.total.client_disconnects} today.{said}",
            advice="Clients give up before slow answers arrive: raise their timeout (an SDK's "
                   "timeout, Open WebUI's AIOHTTP_CLIENT_TIMEOUT), keep the models they ask for "
                   "loaded so answers start sooner, or serve those models from faster machines. "
                   "A chat UI's stop button counts as leaving too, so some of it is normal.",
            data={"requests": total.requests, "client_disconnects": total.client_disconnects,
                  "rate": round(rate, 4), "day_client_disconnects":
                  snapshot.day.total.client_disconnects})]


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_health_checks(config: Config) -> Sequence[DisconnectCheck]:
    return [DisconnectCheck.from_config(config)]
