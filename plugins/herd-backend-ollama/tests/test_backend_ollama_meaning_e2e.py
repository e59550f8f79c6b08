"""keep_alive means what the client said across the fleet, over real sockets: a real router, real
node agents and simulated Ollama nodes. The simulator's own state (its ``/api/ps``, its request
counters) is the witness of what reached a node."""

from __future__ import annotations

import aiohttp
import pytest
from herd_sim.testing import chat, contexts, herd_over, loaded_on, post, profile

from herd_kernel.testing import wait_for

QWEN = "qwen2.5:7b"




# --- keep_alive across the fleet ----------------------------------------------------------------

MODEL = "llama3.2:3b"


@pytest.fixture
async def pair(sims, herd_router, herd_agent):
    """Two nodes with MODEL loaded, whose agents sent one heartbeat and wait 60 s for the next:
    whatever the registry shows afterwards, the router did itself."""
    fleet = await sims(profile("a", [MODEL, QWEN], loaded=[MODEL]),
                       profile("b", [MODEL, QWEN], loaded=[MODEL]))
    router = await herd_over(fleet, herd_router, herd_agent, interval=60)
    assert all(MODEL in loaded_on(router, n) for n in "ab")
    return fleet, router


async def ps(router) -> dict[str, list[str]]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{router.url}/api/ps") as r:
            return {m["name"]: m["fleet_nodes"] for m in (await r.json())["models"]}


@pytest.mark.parametrize("path,body,shape", [
    ("/api/generate", {"model": MODEL, "keep_alive": 0, "prompt": ""}, "response"),  # Open WebUI
    ("/api/chat", {"model": MODEL, "keep_alive": "0s", "messages": []}, "message"),
])
async def test_unload_reaches_every_node_holding_the_model(pair, path, body, shape):
    fleet, router = pair
    status, headers, payload = await post(router.url, path, body)
    assert status == 200, payload
    assert payload["done"] is True and payload["done_reason"] == "unload"
    assert payload["model"] == MODEL and shape in payload
    assert sorted(headers["X-Fleet-Nodes"].split(",")) == ["a", "b"]
    assert all(MODEL not in contexts(node) for node in fleet.nodes.values())
    assert MODEL not in await ps(router)  # at once, not a heartbeat later
    trace = router.services.recent_traces[-1]
    assert trace.details["nodes"] == {"a": "ok", "b": "ok"}


async def test_a_load_through_the_router_shows_in_api_ps_at_once(pair):
    fleet, router = pair
    status, _, payload = await post(router.url, "/api/generate",
                                    {"model": QWEN, "prompt": "", "keep_alive": -1})
    assert status == 200 and payload["done_reason"] == "load"
    [holder] = [name for name, node in fleet.nodes.items() if QWEN in contexts(node)]
    assert (await ps(router))[QWEN] == [holder]


async def test_keep_alive_zero_on_a_chat_unloads_the_model_on_the_other_nodes_too(pair):
    fleet, router = pair
    status, headers, payload = await post(router.url, "/api/chat", chat(
        MODEL, keep_alive=0, options={"num_predict": 4}))
    assert status == 200, payload
    assert payload["message"]["content"]
    await wait_for(lambda: all(MODEL not in contexts(node) for node in fleet.nodes.values()))
    other = "b" if headers["X-Fleet-Node"] == "a" else "a"
    await wait_for(lambda: any(e["kind"] == "keep_alive_spread" for e in router.services.events))
    [event] = [e for e in router.services.events if e["kind"] == "keep_alive_spread"]
    assert (event["node_id"], event["outcome"], event["keep_alive"]) == (other, "ok", 0)
    assert MODEL not in await ps(router)


async def test_keep_alive_forever_on_a_chat_pins_the_model_on_the_other_nodes_too(pair):
    fleet, router = pair
    status, headers, _ = await post(router.url, "/api/chat", chat(
        MODEL, keep_alive=-1, options={"num_predict": 4}))
    assert status == 200
    await wait_for(lambda: all(
        expires.year > 2200 for node in fleet.nodes.values()
        for name, _, expires in node.loaded_models() if name == MODEL))
    other = "b" if headers["X-Fleet-Node"] == "a" else "a"
    await wait_for(lambda: any(e["kind"] == "keep_alive_spread" and e["node_id"] == other
                               for e in router.services.events))
