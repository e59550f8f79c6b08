"""OpenAI-compatible engines (llama.cpp's llama-server, llama-cpp-python, vLLM, LM Studio,
mlx_lm.server): the node probe that reports them as heartbeat endpoints (``node``), the engine
that sends routed requests to them, translating Ollama's API (``engine``, ``translate``), and the
client routes this backend serves when it runs alone (``router``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import herd_api_formats

from herd_backend_openai import engine, node, router
from herd_kernel.api import NodeContext, RouteDef
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl


class OpenAIBackend:
    name = "openai"
    modalities = ("chat", "generate", "embed")

    def __init__(self) -> None:
        self.state = node.ProbeState()  # node side: per agent, kept across heartbeats
        self.engine = engine.OpenAIEngine()  # router side: drives endpoints of kind "openai"

    def routes(self, services: Any) -> Sequence[RouteDef]:
        return router.routes(services)

    async def probe(self, ctx: NodeContext) -> Mapping[str, Any]:
        return await node.probe(ctx, self.state)


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return node.SETTINGS


@hookimpl
def herd_backends(config: Config) -> list[OpenAIBackend]:
    herd_api_formats.register()
    return [OpenAIBackend()]
