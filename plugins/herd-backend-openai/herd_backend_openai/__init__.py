"""OpenAI-compatible engines (llama.cpp's llama-server, llama-cpp-python, vLLM, LM Studio,
mlx_lm.server): Ollama requests translated for them (``translate``), and the node probe that
reports them as heartbeat endpoints (``node``). The router-side routes arrive with the kernel's
endpoint heartbeat; until then this plugin declares its settings only."""

from __future__ import annotations

from collections.abc import Sequence

from herd_backend_openai import node
from herd_kernel.config import Setting
from herd_kernel.hookspecs import hookimpl


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return node.SETTINGS
