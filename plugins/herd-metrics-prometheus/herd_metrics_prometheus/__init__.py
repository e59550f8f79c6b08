"""Prometheus metrics for the router: ``GET /metrics`` in the text exposition format (0.0.4),
written by our own code. Counters are updated once per finished request (``herd_request_finished``);
the fleet's state (nodes, queues, health, trace store) is read from the health engine's snapshot
when scraped."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from herd_kernel.api import RouteDef, RouterAPI
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl
from herd_kernel.models import Trace
from herd_metrics_prometheus.exposition import CONTENT_TYPE
from herd_metrics_prometheus.metrics import Metrics

# The router this process serves. ``herd_request_finished`` names no router, so the counters are
# the latest router's (a process runs one; a test that starts another starts afresh).
_live: Metrics | None = None


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return (
        Setting(env="FLEET_METRICS_MAX_MODELS", type=int, default=100,
                help="Distinct model names /metrics labels its series with; requests for models "
                "beyond are counted under model=\"other\" (keeps Prometheus' series bounded)."),
        Setting(env="FLEET_METRICS_MAX_NODES", type=int, default=300,
                help="Distinct node names /metrics labels its per-request series with; nodes "
                "beyond are counted under node=\"other\"."),
    )


def build(config: Config) -> Metrics:
    return Metrics(max_models=max(1, config["FLEET_METRICS_MAX_MODELS"]),
                   max_nodes=max(1, config["FLEET_METRICS_MAX_NODES"]))


@hookimpl
def herd_routes(services: RouterAPI) -> Sequence[RouteDef]:
    global _live
    metrics = _live = build(services.config)

    async def scrape(request: web.Request) -> web.Response:
        health = services.health
        text = metrics.render(health.snapshot(), health.report())
        return web.Response(body=text.encode("utf-8"), headers={"Content-Type": CONTENT_TYPE})

    # "read": open from this machine; from elsewhere a client key (FLEET_API_KEYS) or the admin
    # key once either is set (docs/security.md)
    return (RouteDef(method="GET", path="/metrics", handler=scrape, name="metrics",
                     access="read"),)


@hookimpl
def herd_request_finished(trace: Trace) -> None:
    if _live is not None:
        _live.record(trace)
