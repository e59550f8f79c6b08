"""Model recommendations (``GET /dashboard/api/recommendations``): a model mix per node from its
memory, the fleet's last day of requests and a curated table of Ollama model sizes, each row with
its reason and a pull target. Read from the health engine's snapshot only, never a node."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from herd_kernel.api import RouteDef, RouterAPI
from herd_kernel.config import Setting
from herd_kernel.hookspecs import hookimpl

PATH = "/dashboard/api/recommendations"

SETTINGS = (
    Setting(env="FLEET_RECOMMEND_HEADROOM_PCT", type=float, bounds="[0, 100)", default=20.0,
            help="Percent of a node's model memory (unified, GPU or system) kept free when "
            "recommending models: nothing is suggested that needs more than the rest."),
    Setting(env="FLEET_RECOMMEND_MIN_REQUESTS", type=int, default=20,
            help="Requests for a model in the last 24 h that make it in high demand, so a larger "
            "variant is suggested on a node with room; also the fleet's requests below which no "
            "removal is suggested."),
)


def _policy(config: Any) -> Any:
    from herd_fleet_recommendations.mix import Policy

    return Policy(headroom_pct=float(config["FLEET_RECOMMEND_HEADROOM_PCT"]),
                  min_requests=max(1, int(config["FLEET_RECOMMEND_MIN_REQUESTS"])))


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_routes(services: RouterAPI) -> Sequence[RouteDef]:
    policy = _policy(services.config)  # a bad value stops the router at start, named
    cached: list[Any] = [None, -1.0]  # body, monotonic time it was built

    async def recommendations(request: web.Request) -> web.Response:
        from herd_fleet_recommendations.mix import recommend

        now = time.monotonic()
        # as long as the health engine reuses one snapshot: polling costs nothing per request
        ttl = float(services.config["FLEET_HEALTH_CACHE_S"])
        if cached[0] is None or not 0 <= now - cached[1] < ttl:
            cached[0], cached[1] = recommend(services.health.snapshot(), policy), now
        return web.json_response(cached[0])

    return [RouteDef(method="GET", path=PATH, handler=recommendations, access="read")]
