"""Waiting and unknown models at Ollama's edges, over real sockets: lane waits last as long as the
client waits, the holding queue is bounded, a model the fleet has not reported yet is 503 (not
404), and namespaced names resolve as Ollama resolves them."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import attrs
import pytest
from herd_analytics import store_of
from herd_sim import PROFILES, Fault

from herd_kernel.testing import heartbeat_payload, wait_for

MODEL = "llama3.2:3b"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "stream": False,
        "options": {"num_predict": 8}}


@pytest.fixture
def sim(sim_fleet):
    def start(*names: str):
        return sim_fleet(*(attrs.evolve(PROFILES["medium"], name=n, loaded=(MODEL,), models=(MODEL,),
                                        num_parallel=4) for n in names))

    return start


async def post(http, url, body, path="/api/chat"):
    async with http.post(f"{url}{path}", json=body) as r:
        return r.status, dict(r.headers), await r.read()


@pytest.mark.parametrize("env", [{}, {"FLEET_HOLD_TIMEOUT": "0"}], ids=["default", "zero"])
async def test_a_burst_of_12_on_4_slots_waits_as_long_as_the_client_does(
        sim, herd_router, herd_agent, env):
    """Before, 0 meant "never wait" (8 of the 12 got 503 at once) and the default (30 s) turned
    a long line into 503s; Ollama queues them and lets the client decide how long to wait."""
    fleet = await sim("four")
    node = fleet.nodes["four"]
    router = await herd_router(env={"FLEET_REBALANCE_INTERVAL": "0.05",
                                    "FLEET_HOLDING_TIMEOUT": "0.1", **env})
    await herd_agent(router.url, node.url, "four", interval=0.1,
                     env={"FLEET_NODE_OLLAMA_NUM_PARALLEL": "4"})
    await wait_for(lambda: router.services.fleet.nodes.get("four") is not None
                   and router.services.fleet.nodes["four"].available)
    node.set_fault(Fault(kind="stall", count=4, after_chunks=1))  # the first 4 hold every slot
    async with aiohttp.ClientSession() as http:
        burst = [asyncio.ensure_future(post(http, router.url, {**CHAT, "stream": True}))
                 for _ in range(4)]
        await wait_for(lambda: node.stats["in_flight"] == 4)
        burst += [asyncio.ensure_future(post(http, router.url, CHAT)) for _ in range(8)]
        await wait_for(lambda: router.services.queues.waiting_total == 8)
        await asyncio.sleep(0.3)  # past the holding queue's bound: lane waits are not bounded
        assert router.services.queues.waiting_total == 8 and not any(f.done() for f in burst)
        node.clear_faults()
        results = await asyncio.gather(*burst)
    assert [status for status, _h, _b in results] == [200] * 12
    assert router.services.queues.timeouts_total == 0
    assert node.stats["max_in_flight"][MODEL] == 4
    assert sum(1 for _s, h, _b in results if "X-Fleet-Queued-Ms" in h) == 8


async def test_the_holding_queue_is_bounded_while_no_node_can_serve(sim, herd_router, herd_agent):
    fleet = await sim("away")
    node = fleet.nodes["away"]
    router = await herd_router(env={"FLEET_REBALANCE_INTERVAL": "0.05",
                                    "FLEET_HOLDING_TIMEOUT": "0.3"})
    agent = await herd_agent(router.url, node.url, "away", interval=0.1)
    await wait_for(lambda: router.services.fleet.nodes.get("away") is not None
                   and router.services.fleet.nodes["away"].available)
    agent.stop()  # drains: offline, but the router still knows it holds the model
    await wait_for(lambda: router.services.fleet.nodes["away"].status == "offline")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        status, headers, body = await post(http, router.url, CHAT)
    assert status == 503
    assert int(headers["Retry-After"]) >= 1 and headers["x-should-retry"] == "false"
    error = json.loads(body)["error"]
    assert "within 0.3 s" in error and "no node can serve it" in error
    assert not router.services.queues.held and router.services.queues.timeouts_total == 1
    assert node.stats["requests"].get("/api/chat", 0) == 0


async def test_unknown_model_is_503_while_the_fleet_is_still_reporting(herd_router):
    router = await herd_router()
    async with aiohttp.ClientSession() as http:
        # just started, no node has reported: the model may well exist
        status, headers, body = await post(http, router.url, {**CHAT, "model": "mystery:1b"})
        assert status == 503 and int(headers["Retry-After"]) >= 1
        assert "fleet still reporting" in json.loads(body)["error"]
        async with http.post(f"{router.url}/v1/chat/completions",
                             json={**CHAT, "model": "mystery:1b"}) as r:
            assert r.status == 503 and "Retry-After" in r.headers
            assert "fleet still reporting" in (await r.json())["error"]["message"]
        # a node whose Ollama is restarting cannot list its models
        down = heartbeat_payload("n1", available=[MODEL])
        down["endpoints"][0].update(healthy=False, models_available=[], models_loaded=[])
        async with http.post(f"{router.url}/heartbeat", json=down) as r:
            assert r.status == 200
        status, headers, body = await post(http, router.url, {**CHAT, "model": "mystery:1b"})
        assert status == 503 and "n1" in json.loads(body)["error"]
        # every node has reported a model list: an unknown model is 404 in Ollama's words
        async with http.post(f"{router.url}/heartbeat",
                             json=heartbeat_payload("n1", available=[MODEL])) as r:
            assert r.status == 200
        status, headers, body = await post(http, router.url, {**CHAT, "model": "mystery:1b"})
    assert status == 404 and json.loads(body) == {"error": "model 'mystery:1b' not found"}
    assert "Retry-After" not in headers


@pytest.mark.parametrize("name", ["library/llama3.2:3b", "registry.ollama.ai/library/llama3.2:3b",
                                  "Registry.Ollama.AI/Library/Llama3.2:3B"])
async def test_namespaced_names_resolve_as_ollama_resolves_them(sim, herd_router, herd_agent,
                                                                name):
    fleet = await sim("named")
    node = fleet.nodes["named"]
    router = await herd_router()
    await herd_agent(router.url, node.url, "named", interval=0.1)
    await wait_for(lambda: router.services.fleet.nodes.get("named") is not None
                   and router.services.fleet.nodes["named"].available)
    async with aiohttp.ClientSession() as http:
        status, headers, body = await post(http, router.url, {**CHAT, "model": name})
    assert status == 200 and headers["X-Fleet-Node"] == "named"
    assert json.loads(body)["model"] == name  # the client's body reached Ollama as it was sent
    assert "X-Fleet-Fallback" not in headers


async def test_after_a_restart_a_model_of_a_node_not_back_yet_is_503_not_404(sim, herd_router):
    fleet = await sim("n1")
    url = fleet.nodes["n1"].url
    first = await herd_router()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{first.url}/heartbeat",
                             json=heartbeat_payload("n1", url=url, loaded=[MODEL])) as r:
            assert r.status == 200
        status, _headers, _body = await post(http, first.url, CHAT)
        assert status == 200
        await store_of(first.services).flush()
        # a new router on the same data dir: another node reports first, n1 not yet
        second = await herd_router()
        async with http.post(f"{second.url}/heartbeat",
                             json=heartbeat_payload("n2", url=url, loaded=["other:1b"])) as r:
            assert r.status == 200
        status, headers, body = await post(http, second.url, CHAT)
        assert status == 503 and "Retry-After" in headers
        assert "node n1 has not reported yet" in json.loads(body)["error"]
        async with http.post(f"{second.url}/heartbeat",
                             json=heartbeat_payload("n1", url=url, loaded=[MODEL])) as r:
            assert r.status == 200
        status, _headers, _body = await post(http, second.url, CHAT)
    assert status == 200
