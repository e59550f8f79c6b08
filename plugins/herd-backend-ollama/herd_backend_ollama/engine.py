"""The Ollama engine: how a routed request reaches an Ollama endpoint. Ollama serves its own API
and OpenAI's (and Anthropic's Messages since 0.14.0) itself, so the client's bytes go as they are
(as the request shapers left them), with router-only fields dropped and the model named as routed;
a route newer than the endpoint's Ollama fails over to the next node before anything is sent."""

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp

from herd_kernel.models import Endpoint, RouteRequest
from herd_kernel.pipeline import Outbound, UpstreamFailed

# the first Ollama release that serves each route added late: ollama/ollama#13351 (0.13.3) and
# #13600 (0.14.0)
SINCE = {"/v1/responses": "0.13.3", "/v1/messages": "0.14.0"}

_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")


def parse_version(version: str | None) -> tuple[int, ...] | None:
    match = _VERSION.match(version or "")
    return tuple(int(x) for x in match.groups()) if match else None


ROUTER_ONLY_FIELDS = ("fallback_models",)

_SINCE_PARSED = {path: parse_version(v) for path, v in SINCE.items()}


class OllamaEngine:
    kind = "ollama"

    def __init__(self) -> None:
        self.services: Any = None  # bound when the router builds its routes

    def bind(self, services: Any) -> None:
        self.services = services

    def refuses(self, route: RouteRequest) -> str | None:
        return None  # Ollama speaks every API the router serves (old releases fail over)

    def outbound(
        self, route: RouteRequest, raw: bytes, body: dict[str, Any], decision: Any
    ) -> Outbound:
        endpoint = decision.endpoint
        needed = _SINCE_PARSED.get(route.path)
        if needed is not None:
            have = parse_version(endpoint.version)
            if have is not None and have < needed:
                # it would answer 404: fail like any node before the first byte, so the
                # pipeline goes on to the next-best node
                raise UpstreamFailed(f"Ollama {endpoint.version} has no {route.path} "
                                     f"(needs {SINCE[route.path]})", 404)
        if decision.model == route.model and not any(k in body for k in ROUTER_ONLY_FIELDS):
            return Outbound(body=raw)
        sent = {k: v for k, v in body.items() if k not in ROUTER_ONLY_FIELDS}
        sent["model"] = decision.model  # a fallback or a substitute: named as it was routed
        return Outbound(body=json.dumps(sent).encode())

    async def warm(self, endpoint: Endpoint, model: str) -> str | None:
        """Ollama loads a model on an empty generate request: the error, or None once loaded."""
        services = self.services
        try:
            status, body = await services.endpoint_post(
                endpoint.url, "/api/generate", {"model": model, "prompt": "", "stream": False},
                services.config["FLEET_READ_TIMEOUT"])
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if status == 200 else f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}"
