"""The Ollama backend: Ollama-native and OpenAI-compatible routes on the router (``router``), the
Ollama probe in every node's heartbeat (``node``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import herd_api_formats

from herd_backend_ollama import engine, node, router
from herd_kernel.api import NodeContext, RouteDef
from herd_kernel.config import Config
from herd_kernel.hookspecs import hookimpl


class OllamaBackend:
    name = "ollama"
    modalities = ("chat", "generate", "embed")

    def __init__(self) -> None:
        self.capabilities = node.Capabilities()  # node side: per agent, kept across heartbeats
        self.engine = engine.OllamaEngine()  # router side: drives endpoints of kind "ollama"

    def routes(self, services: Any) -> Sequence[RouteDef]:
        return router.routes(services, self.engine)

    async def probe(self, ctx: NodeContext) -> Mapping[str, Any]:
        return await node.probe(ctx, self.capabilities)


@hookimpl
def herd_settings() -> Sequence[Any]:
    return node.SETTINGS


@hookimpl
def herd_backends(config: Config) -> list[OllamaBackend]:
    herd_api_formats.register()
    return [OllamaBackend()]
