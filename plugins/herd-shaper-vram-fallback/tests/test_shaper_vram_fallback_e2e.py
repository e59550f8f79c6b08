"""VRAM fallback over real sockets: a real router, real node agents, simulated Ollama nodes."""

from __future__ import annotations

import json

import aiohttp
import attrs
import pytest
from herd_sim import PROFILES

from herd_kernel.testing import wait_for

QWEN = "qwen2.5:7b"


def profile(name: str, models, loaded=(), **changes):
    return attrs.evolve(PROFILES["medium"], name=name, models=tuple(models), loaded=tuple(loaded),
                        tokens_per_s=2000.0, num_parallel=2, **changes)


@pytest.fixture
def sims(sim_fleet):
    return lambda *profiles: sim_fleet(*profiles, time_scale=0.01)


async def load(node, model: str, num_ctx: int) -> None:
    """Load ``model`` on a simulated node at ``num_ctx``, as another client of that node would."""
    async with aiohttp.ClientSession() as http:
        body = {"model": model, "prompt": "", "options": {"num_ctx": num_ctx}, "stream": False}
        async with http.post(f"{node.url}/api/generate", json=body) as r:
            assert (await r.json())["done_reason"] == "load"


async def herd_over(fleet, herd_router, herd_agent, *, interval=0.1, env=None):
    router = await herd_router(env=env or {})
    for name, node in fleet.nodes.items():
        await herd_agent(router.url, node.url, name, interval=interval)
    await wait_for(lambda: len(router.services.fleet.nodes) == len(fleet.nodes))
    return router


def loaded_on(router, node_id: str) -> dict[str, int]:
    return {k: m.context_length for k, m in router.services.fleet.nodes[node_id].loaded.items()}


def contexts(node) -> dict[str, int]:
    return {name: ctx for name, ctx, _ in node.loaded_models()}


async def post(url: str, path: str, body: dict):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}{path}", json=body) as r:
            return r.status, r.headers, json.loads(await r.read())


def chat(model: str, **extra):
    return {"model": model, "stream": False,
            "messages": [{"role": "user", "content": "Why is the sky blue?"}], **extra}


async def test_vram_fallback_keeps_to_the_line(sims, herd_router, herd_agent):
    fleet = await sims(profile("solo", ["llama3.2:1b", "llama3.2:3b", "qwen2.5-coder:14b", QWEN],
                               loaded=["llama3.2:3b", "qwen2.5-coder:14b"]))
    router = await herd_over(fleet, herd_router, herd_agent, env={"FLEET_VRAM_FALLBACK": "1"})
    await wait_for(lambda: "llama3.2:3b" in loaded_on(router, "solo"))

    status, headers, payload = await post(router.url, "/api/chat", chat(
        QWEN, options={"num_predict": 4}))
    assert status == 200 and payload["model"] == QWEN  # qwen2.5-coder is another line
    assert "X-Fleet-Vram-Fallback" not in headers

    status, headers, payload = await post(router.url, "/api/chat", chat(
        "llama3.2:1b", options={"num_predict": 4}))
    assert status == 200 and payload["model"] == "llama3.2:3b"
    assert headers["X-Fleet-Vram-Fallback"] == "llama3.2:1b -> llama3.2:3b"
    assert headers["X-Fleet-Served-Model"] == "llama3.2:3b"
    assert router.services.recent_traces[-1].details["substitution"]["reason"] == "vram_fallback"
