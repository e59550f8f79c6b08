"""Health check ``context_protection``: what clients' ``options.num_ctx`` did to loaded models,
from ``herd-shaper-context``'s events. Reloads (a num_ctx above the loaded context, or any other
one while protection only warns) stall every client of that node; the requests the router spared
a reload, or served from a larger loaded model, are information."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from herd_kernel.api import Finding, HealthCheck, HealthSnapshot
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl

NEEDED = "context_reload_needed"  # num_ctx above the loaded context: Ollama reloads
WOULD = "context_num_ctx_would_reload"  # below it: raised to it ("strip") or let through ("warn")
UPGRADE = "context_upgrade"  # served by a larger loaded model that had the context
NAMED_AT_MOST = 3

SETTINGS = (
    Setting(env="FLEET_HEALTH_CONTEXT_PROTECTION_RELOADS_PER_HOUR", type=int, bounds="[1, )",
            default=3,
            help="Context reloads in the last hour (requests whose num_ctx made Ollama reload a "
            "loaded model) at which the context_protection health check warns; fewer are "
            "information, as many earlier in the day and none since are reported as stopped."),
)


def most_common(snapshot: HealthSnapshot, since: float, kind: str,
                say: Callable[[Mapping[str, Any]], str], action: str | None = None) -> list[str]:
    """The commonest cases of ``kind`` among the recent events since ``since``, said by ``say``."""
    said = Counter(say(e) for e in snapshot.events if e.get("kind") == kind
                   and float(e.get("timestamp") or 0) >= since
                   and (action is None or e.get("action") == action))
    return [f"{text} ({n})" for text, n in said.most_common(NAMED_AT_MOST)]


def reload_case(e: Mapping[str, Any]) -> str:
    return (f"{e.get('model')} on {e.get('node_id')} loaded with {e.get('loaded')}, "
            f"num_ctx {e.get('requested')}")


def spared_case(e: Mapping[str, Any]) -> str:
    if e.get("kind") == UPGRADE:
        return f"{e.get('model')} -> {e.get('served')} for num_ctx {e.get('num_ctx')}"
    return (f"{e.get('model')} on {e.get('node_id')}: num_ctx {e.get('requested')} sent as the "
            f"loaded {e.get('loaded')}")


class ContextProtectionCheck:
    id = "context_protection"
    title = "Context reloads"

    def __init__(self, warn_per_hour: int) -> None:
        self.warn_per_hour = warn_per_hour

    def evaluate(self, snapshot: HealthSnapshot) -> Sequence[Finding]:
        # the router's protection mode is the action of its latest "would reload" event
        modes = [e.get("action") for e in snapshot.events if e.get("kind") == WOULD]
        warn_only = bool(modes) and modes[-1] == "warn"
        findings = []
        reloads = self.reloads(snapshot, warn_only)
        if reloads is not None:
            findings.append(reloads)
        spared = snapshot.hour.events.get(UPGRADE, 0) + \
            (0 if warn_only else snapshot.hour.events.get(WOULD, 0))
        if spared:
            since = snapshot.now - snapshot.hour.seconds
            cases = most_common(snapshot, since, UPGRADE, spared_case) + \
                most_common(snapshot, since, WOULD, spared_case, action="strip")
            findings.append(Finding(
                check_id=self.id, severity="info", title="The router spared context reloads",
                detail=f"{spared} requests in the last hour sent an options.num_ctx that would "
                "have reloaded a model; the router sent the loaded context instead, or served "
                "them from a larger loaded model with that context"
                + (f": {'; '.join(cases)}." if cases else "."),
                advice="Nothing to fix; to see fewer of these, have those clients stop sending "
                "num_ctx (or send the context the model is loaded with).",
                data={"spared": spared, "upgrades": snapshot.hour.events.get(UPGRADE, 0)}))
        return findings

    def reloads(self, snapshot: HealthSnapshot, warn_only: bool) -> Finding | None:
        def count(window: Any) -> int:
            return window.events.get(NEEDED, 0) + (window.events.get(WOULD, 0) if warn_only else 0)

        hour, day = count(snapshot.hour), count(snapshot.day)
        if hour:
            severity, window, total = ("warning" if hour >= self.warn_per_hour else "info",
                                       snapshot.hour, hour)
            when = "in the last hour"
        elif day >= self.warn_per_hour:
            severity, window, total = "info", snapshot.day, day
            when = "earlier in the last 24 hours, none in the last hour"
        else:
            return None
        since = snapshot.now - window.seconds
        cases = most_common(snapshot, since, NEEDED, reload_case)
        smaller = most_common(snapshot, since, WOULD, reload_case, action="warn")
        fixes = []
        if window.events.get(NEEDED, 0):
            fixes.append("load those models with the larger context once (e.g. "
                         "OLLAMA_CONTEXT_LENGTH on that node) so later requests fit, or have "
                         "the clients stop asking for more context than they need")
        if warn_only and window.events.get(WOULD, 0):
            fixes.append("set FLEET_CONTEXT_PROTECTION=strip (the default) so a smaller num_ctx "
                         "is sent as the loaded one instead of reloading the model")
        advice = "; ".join(fixes) or "have the clients stop sending options.num_ctx"
        return Finding(
            check_id=self.id, severity=severity,
            title="Context reloads stopped" if not hour else "Clients' num_ctx reloads models",
            detail=f"{total} requests {when} sent an options.num_ctx other than the context "
            "the model was loaded with, so Ollama reloaded it (seconds to minutes, for every "
            "client of that node)" + (f": {'; '.join(cases + smaller)}." if cases + smaller
                                      else "."),
            advice=advice[0].upper() + advice[1:] + ".",
            data={"reloads": total, "hour": hour, "day": day, "protection_warn_only": warn_only})


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_health_checks(config: Config) -> Sequence[HealthCheck]:
    return [ContextProtectionCheck(config["FLEET_HEALTH_CONTEXT_PROTECTION_RELOADS_PER_HOUR"])]
