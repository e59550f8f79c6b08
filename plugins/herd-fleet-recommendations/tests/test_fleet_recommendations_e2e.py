"""``GET /dashboard/api/recommendations`` over real sockets: a real router with every installed
plugin; nodes as heartbeats posted to it, or real node agents in front of simulated Ollama
machines (herd-sim) that report the simulated hardware; client requests through the router."""

from __future__ import annotations

from typing import Any

import aiohttp
from herd_fleet_recommendations.catalogue import card_for
from herd_sim.testing import chat, post, profile

from herd_kernel.testing import heartbeat_payload, wait_for

PATH = "/dashboard/api/recommendations"
FRESH = {"FLEET_HEALTH_CACHE_S": "0"}  # every GET builds a new snapshot


async def get(url: str, path: str = PATH) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url + path) as r:
            return r.status, await r.json()


async def test_an_empty_fleet_answers_the_shape_with_nothing_to_do(herd_router):
    router = await herd_router()
    status, body = await get(router.url)
    assert status == 200
    assert body["recommendations"] == [] and body["nodes"] == [] and body["missing"] == []
    assert body["demand"] == [] and body["window_s"] == 86400
    assert body["fleet"] == {"requests_24h": 0, "models_requested": 0, "active": False}
    assert body["headroom_pct"] == 20.0 and body["generated_at"] > 0


async def test_demand_for_a_missing_model_gets_a_pull_on_the_node_with_room(herd_router):
    router = await herd_router(env=FRESH)
    beats = [heartbeat_payload("roomy", memory_gb=32, url="http://127.0.0.1:9",
                               loaded=["llama3.2:3b"]),
             heartbeat_payload("tiny", memory_gb=4, url="http://127.0.0.1:10",
                               available=["llama3.2:1b"])]
    for beat in beats:
        status, _h, _b = await post(router.url, "/heartbeat", beat)
        assert status == 200
    # clients ask for models no node has: each is refused (404), and counted
    for model, times in (("qwen2.5:7b", 3), ("llama3.3:70b", 2), ("nobody/knows:1b", 1)):
        for _ in range(times):
            status, _h, body = await post(router.url, "/api/chat", chat(model))
            assert status == 404, body
    status, body = await get(router.url)
    assert status == 200
    [pull] = [r for r in body["recommendations"] if r["action"] == "pull"]
    assert pull["node_id"] == "roomy" and pull["model"] == "qwen2.5:7b" and pull["fits"] is True
    assert pull["pull"] == {"method": "POST", "path": "/dashboard/api/pull",
                            "body": {"model": "qwen2.5:7b", "node_id": "roomy"}}
    assert "requested 3 times" in pull["reason"] and "3 refused" in pull["reason"]
    # the target names a node the router knows, and a model the table sizes
    _s, fleet = await get(router.url, "/fleet/status")
    assert pull["pull"]["body"]["node_id"] in {n["node_id"] for n in fleet["nodes"]}
    assert card_for(pull["pull"]["body"]["model"]).size_gb == pull["size_gb"]
    # nothing that does not fit: the 70B needs ~47 GB, the roomy node gives models 25.6 GB
    budget = {n["node_id"]: n["memory"]["budget_gb"] for n in body["nodes"]}
    assert budget == {"roomy": 25.6, "tiny": 3.2}
    for row in body["recommendations"]:
        assert row["model"] != "llama3.3:70b"
        if row["action"] != "keep":
            assert row["memory_gb"] <= budget[row["node_id"]]
    missing = {m["model"]: m for m in body["missing"]}
    assert missing["qwen2.5:7b"]["node_id"] == "roomy"
    assert missing["llama3.3:70b"]["node_id"] is None
    assert missing["llama3.3:70b"]["rejected_24h"] == 2
    assert missing["nobody/knows:1b"]["node_id"] is None
    assert "not in the curated table" in missing["nobody/knows:1b"]["reason"]
    assert {d["model"]: d["rejected_24h"] for d in body["demand"]} == {
        "qwen2.5:7b": 3, "llama3.3:70b": 2, "nobody/knows:1b": 1}


async def test_an_idle_fleet_gets_no_pull_and_demand_then_brings_a_larger_model(
        sims, herd_router, herd_agent):
    fleet = await sims(profile("studio", ["llama3.2:3b"], loaded=["llama3.2:3b"], memory_gb=64),
                       profile("laptop", ["llama3.2:1b"], memory_gb=16))
    router = await herd_router(env={**FRESH, "FLEET_RECOMMEND_MIN_REQUESTS": "3"})
    for name, node in fleet.nodes.items():
        await herd_agent(router.url, node.url, name, interval=0.1,
                         env={"FLEET_NODE_SIM_HARDWARE": "1"})
    nodes = router.services.fleet.nodes
    await wait_for(lambda: {n: s.heartbeat.memory.total_gb for n, s in nodes.items()}
                   == {"studio": 64, "laptop": 16} and "llama3.2:3b" in nodes["studio"].loaded)

    status, idle = await get(router.url)
    assert status == 200 and idle["fleet"]["active"] is False
    assert [(r["node_id"], r["model"], r["action"]) for r in idle["recommendations"]] == [
        ("studio", "llama3.2:3b", "keep")]
    assert all(r["pull"] is None for r in idle["recommendations"])
    summary = {n["node_id"]: n for n in idle["nodes"]}
    assert summary["studio"]["models_loaded"] == ["llama3.2:3b"]
    assert summary["laptop"]["models_on_disk"] == ["llama3.2:1b"]

    for _ in range(3):  # chat demand for the small model the big machine serves
        status, headers, _b = await post(router.url, "/api/chat",
                                         chat("llama3.2:3b", options={"num_predict": 4}))
        assert status == 200 and headers["X-Fleet-Node"] == "studio"
    status, busy = await get(router.url)
    assert busy["fleet"] == {"requests_24h": 3, "models_requested": 1, "active": True}
    [replace] = [r for r in busy["recommendations"] if r["action"] == "replace"]
    assert replace["node_id"] == "studio" and replace["replaces"] == "llama3.2:3b"
    card = card_for(replace["model"])
    assert card.use == "chat" and card.params_b >= 6.4
    assert replace["memory_gb"] <= 0.5 * 51.2 and replace["fits"] is True
    assert replace["pull"]["body"] == {"model": replace["model"], "node_id": "studio"}
    [keep] = [r for r in busy["recommendations"] if r["action"] == "keep"]
    assert "3 requests" in keep["reason"] and "3 of them served here" in keep["reason"]
    summary = {n["node_id"]: n for n in busy["nodes"]}
    assert summary["studio"]["usage"]["served_since_start"] == {"llama3.2:3b": 3}
    assert not [r for r in busy["recommendations"] if r["node_id"] == "laptop"]
