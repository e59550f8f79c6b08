"""The request means what the client said, over real sockets: a real router, real node agents and
simulated Ollama nodes. The simulator's own state (its ``/api/ps``, its request counters) is the
witness of what reached a node."""

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


# --- num_ctx and the model that answers ---------------------------------------------------------


async def test_a_larger_num_ctx_is_served_by_the_model_asked_for_not_a_same_family_one(
    sims, herd_router, herd_agent
):
    # qwen2.5:7b and deepseek-r1:7b share Ollama's details.family "qwen2": not the same model
    fleet = await sims(profile("solo", [QWEN, "deepseek-r1:7b"], loaded=[QWEN]))
    solo = fleet.nodes["solo"]
    await load(solo, "deepseek-r1:7b", 32768)
    router = await herd_over(fleet, herd_router, herd_agent)
    await wait_for(lambda: loaded_on(router, "solo") == {QWEN: 4096, "deepseek-r1:7b": 32768})

    status, headers, payload = await post(router.url, "/api/chat", chat(
        QWEN, options={"num_ctx": 16384, "num_predict": 8}))
    assert status == 200, payload
    assert payload["model"] == QWEN and "thinking" not in payload["message"]
    assert headers["X-Fleet-Served-Model"] == QWEN
    assert "X-Fleet-Context-Upgrade" not in headers and "X-Fleet-Context-Protection" not in headers
    assert contexts(solo)[QWEN] == 16384  # the client's num_ctx reached Ollama unchanged
    trace = router.services.recent_traces[-1]
    assert trace.model == QWEN and trace.original_model == QWEN
    assert router.services.events[-1]["kind"] == "context_reload_needed"


async def test_routing_prefers_the_node_holding_the_model_at_that_context(
    sims, herd_router, herd_agent
):
    # "a-tight" wins every tie (lowest id): only context fit can send the request to "b-roomy"
    fleet = await sims(profile("a-tight", [QWEN], loaded=[QWEN]),
                       profile("b-roomy", [QWEN], loaded=[QWEN]))
    await load(fleet.nodes["b-roomy"], QWEN, 32768)
    router = await herd_over(fleet, herd_router, herd_agent)
    await wait_for(lambda: loaded_on(router, "b-roomy") == {QWEN: 32768})
    loads = {name: node.stats["loads"] for name, node in fleet.nodes.items()}

    status, headers, payload = await post(router.url, "/api/chat", chat(
        QWEN, options={"num_ctx": 16384, "num_predict": 4}))
    assert status == 200, payload
    assert headers["X-Fleet-Node"] == "b-roomy"
    note = "num_ctx=16384 raised to the loaded 32768 (no reload)"
    assert headers["X-Fleet-Context-Protection"] == note
    assert "context-fit" in headers["X-Fleet-Score-Breakdown"]
    assert {name: node.stats["loads"] for name, node in fleet.nodes.items()} == loads
    assert contexts(fleet.nodes["b-roomy"])[QWEN] == 32768  # not reloaded, not shrunk
    assert router.services.recent_traces[-1].details["context_protection"] == note


async def test_another_model_answers_only_when_the_asked_one_is_cold_everywhere(
    sims, herd_router, herd_agent
):
    fleet = await sims(profile("solo", [QWEN, "qwen2.5:14b", "deepseek-r1:7b"]))
    solo = fleet.nodes["solo"]
    await load(solo, "deepseek-r1:7b", 32768)
    await load(solo, "qwen2.5:14b", 32768)
    router = await herd_over(fleet, herd_router, herd_agent)
    await wait_for(lambda: "qwen2.5:14b" in loaded_on(router, "solo"))

    status, headers, payload = await post(router.url, "/api/chat", chat(
        QWEN, options={"num_ctx": 16384, "num_predict": 4}))
    assert status == 200, payload
    assert headers["X-Fleet-Context-Upgrade"] == f"{QWEN} -> qwen2.5:14b"
    assert headers["X-Fleet-Served-Model"] == payload["model"] == "qwen2.5:14b"
    assert QWEN not in contexts(solo)  # the cold model was not loaded
    trace = router.services.recent_traces[-1]
    assert (trace.model, trace.original_model) == ("qwen2.5:14b", QWEN)
    assert trace.details["substitution"] == {"reason": "context_upgrade", "requested": QWEN,
                                             "served": "qwen2.5:14b"}

    # once the asked-for model is hot somewhere, it is what answers
    await load(solo, QWEN, 4096)
    await wait_for(lambda: QWEN in loaded_on(router, "solo"))
    status, headers, payload = await post(router.url, "/api/chat", chat(
        QWEN, options={"num_ctx": 16384, "num_predict": 4}))
    assert status == 200 and payload["model"] == QWEN
    assert "X-Fleet-Context-Upgrade" not in headers


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


# --- thinking budgets ---------------------------------------------------------------------------


@pytest.fixture
async def old_ollama(sims, herd_router, herd_agent):
    """A node whose /api/tags lists no capabilities (older Ollama): only /api/show says."""
    fleet = await sims(profile("old", ["qwen3:8b", "deepseek-r1:7b", "llama3.2:3b"],
                               tags_capabilities=False))
    router = await herd_over(fleet, herd_router, herd_agent)
    def learnt() -> bool:
        available = router.services.fleet.nodes["old"].available  # replaced by each heartbeat
        return len(available) == 3 and all(m.capabilities for m in available.values())

    await wait_for(learnt)
    return fleet, router


async def test_thinking_capability_comes_from_api_show_once_per_model(old_ollama, herd_agent):
    fleet, router = old_ollama
    available = router.services.fleet.nodes["old"].available
    assert "thinking" in available["qwen3:8b"].capabilities
    assert "thinking" not in available["llama3.2:3b"].capabilities
    beats = router.services.fleet.nodes["old"].heartbeats
    await wait_for(lambda: router.services.fleet.nodes["old"].heartbeats >= beats + 3)
    assert fleet.nodes["old"].stats["requests"]["/api/show"] == 3  # once each, not per heartbeat

    status, headers, payload = await post(router.url, "/api/chat", chat(
        "qwen3:8b", options={"num_predict": 5}))
    assert status == 200, payload
    assert headers["X-Thinking-Budget"] == "1024"  # qwen3 is not in the name list's old form
    assert payload["message"]["thinking"]


@pytest.mark.parametrize("path,body,done", [
    ("/api/chat", {"think": False, "options": {"num_predict": 5}},
     lambda p: (p["eval_count"], p["done_reason"])),
    ("/v1/chat/completions", {"reasoning_effort": "none", "max_tokens": 5},
     lambda p: (p["usage"]["completion_tokens"], p["choices"][0]["finish_reason"])),
    ("/v1/chat/completions", {"reasoning": {"effort": "none"}, "max_tokens": 5},
     lambda p: (p["usage"]["completion_tokens"], p["choices"][0]["finish_reason"])),
])
async def test_no_thinking_budget_when_thinking_is_off(old_ollama, path, body, done):
    _, router = old_ollama
    status, headers, payload = await post(router.url, path, chat("deepseek-r1:7b", **body))
    assert status == 200, payload
    assert done(payload) == (5, "length")
    assert "X-Thinking-Budget" not in headers


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
