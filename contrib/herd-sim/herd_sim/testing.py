"""Helpers for end-to-end tests over simulated machines: a real router, real node agents and
herd-sim nodes, whose own ``/api/ps`` and counters witness what reached a node. Used by the
plugins' tests (shapers, backends) with the ``sims`` fixture of herd-sim's pytest plugin."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import aiohttp
import attrs

from herd_sim.catalogue import PROFILES, NodeProfile


def profile(name: str, models: Iterable[str], loaded: Iterable[str] = (),
            **changes: Any) -> NodeProfile:
    """A medium machine named ``name`` with ``models`` on disk and ``loaded`` in memory, fast."""
    return attrs.evolve(PROFILES["medium"], name=name, models=tuple(models), loaded=tuple(loaded),
                        tokens_per_s=2000.0, num_parallel=2, **changes)


async def load(node: Any, model: str, num_ctx: int) -> None:
    """Load ``model`` on a simulated node at ``num_ctx``, as another client of that node would."""
    async with aiohttp.ClientSession() as http:
        body = {"model": model, "prompt": "", "options": {"num_ctx": num_ctx}, "stream": False}
        async with http.post(f"{node.url}/api/generate", json=body) as r:
            assert (await r.json())["done_reason"] == "load"


async def herd_over(fleet: Any, herd_router: Any, herd_agent: Any, *, interval: float = 0.1,
                    env: dict[str, str] | None = None) -> Any:
    """A router, and an agent in front of each machine of ``fleet``, every node reported."""
    from herd_kernel.testing import wait_for

    router = await herd_router(env=env or {})
    for name, node in fleet.nodes.items():
        await herd_agent(router.url, node.url, name, interval=interval)
    await wait_for(lambda: len(router.services.fleet.nodes) == len(fleet.nodes))
    return router


def loaded_on(router: Any, node_id: str) -> dict[str, int]:
    """What the router believes ``node_id`` has in memory: model -> context length."""
    return {k: m.context_length for k, m in router.services.fleet.nodes[node_id].loaded.items()}


def contexts(node: Any) -> dict[str, int]:
    """What the simulated machine really has in memory: model -> context length."""
    return {name: ctx for name, ctx, _ in node.loaded_models()}


async def post(url: str, path: str, body: dict[str, Any]) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}{path}", json=body) as r:
            return r.status, r.headers, json.loads(await r.read())


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "stream": False,
            "messages": [{"role": "user", "content": "Why is the sky blue?"}], **extra}
