"""The router's queues over real sockets: a real router, real node agents and simulated Ollama
nodes. The simulator's own counters (requests per path, the most requests it ever ran at once per
model, its ``/api/ps``) are the witnesses of what reached a node."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import attrs
import openai
import pytest
from herd_sim import PROFILES, Fault

from herd_kernel.testing import wait_for

MODEL = "llama3.2:3b"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}],
        "options": {"num_predict": 12}}


def profile(name: str, loaded: tuple[str, ...] = (MODEL,), **changes):
    # the simulated Ollama could run 4 at once: only the router's limit keeps it to fewer
    return attrs.evolve(PROFILES["medium"], name=name, loaded=loaded, models=(MODEL,),
                        num_parallel=4, **changes)


@pytest.fixture
def sims(sim_fleet):
    return sim_fleet


async def herd_over(fleet, herd_router, herd_agent, *, parallel: int = 1, env=None,
                    plugins=None):
    """A router with one agent per simulated node, each reporting OLLAMA_NUM_PARALLEL=parallel."""
    router = await herd_router(plugins=plugins, env={"FLEET_REBALANCE_INTERVAL": "0.05",
                                                     **(env or {})})
    for name, node in fleet.nodes.items():
        await herd_agent(router.url, node.url, name, interval=0.1,
                         env={"FLEET_NODE_OLLAMA_NUM_PARALLEL": str(parallel)})
    await wait_for(lambda: len(router.services.fleet.nodes) == len(fleet.nodes)
                   and all(n.available for n in router.services.fleet.nodes.values()))
    return router


def chats(node) -> int:
    return node.stats["requests"].get("/api/chat", 0)


async def post(http, url, body, **kw):
    async with http.post(f"{url}/api/chat", json=body, **kw) as r:
        return r.status, dict(r.headers), await r.read()


async def occupy(http, router, node):
    """A streamed request that stalls on ``node`` after its first chunk, holding its only slot
    until ``node.clear_faults()``; returns the request's future."""
    node.set_fault(Fault(kind="stall", count=1, after_chunks=1))
    first = asyncio.ensure_future(post(http, router.url, {**CHAT, "stream": True}))
    await wait_for(lambda: node.stats["in_flight"] == 1)
    return first


async def test_ten_requests_share_one_slot_and_all_complete(sims, herd_router, herd_agent):
    fleet = await sims(profile("solo"), time_scale=0.1)  # ~40 ms a request: they overlap
    router = await herd_over(fleet, herd_router, herd_agent, parallel=1)
    async with aiohttp.ClientSession() as http:
        results = await asyncio.gather(*(
            post(http, router.url, {**CHAT, "stream": i % 2 == 0}) for i in range(10)))
        async with http.get(f"{router.url}/fleet/queue") as r:
            queue = await r.json()
    assert [status for status, _h, _b in results] == [200] * 10
    node = fleet.nodes["solo"]
    assert node.stats["max_in_flight"][MODEL] == 1  # never two at once on the node
    assert chats(node) == 10
    waited = [h for _s, h, _b in results if "X-Fleet-Queued-Ms" in h]
    assert len(waited) >= 5  # they waited in the router, where they could still have moved
    lane = queue["queues"][f"solo:{MODEL}"]
    assert (lane["limit"], lane["in_flight"], lane["pending"], lane["completed"], lane["failed"]) \
        == (1, 0, 0, 10, 0)
    traces = list(router.services.recent_traces)
    assert sum(1 for t in traces if t.details.get("queued_ms")) == len(waited)


async def test_parallel_two_runs_two_at_once_never_three(sims, herd_router, herd_agent):
    fleet = await sims(profile("pair"))
    router = await herd_over(fleet, herd_router, herd_agent, parallel=2)
    async with aiohttp.ClientSession() as http:
        results = await asyncio.gather(*(post(http, router.url, CHAT) for _ in range(8)))
    assert [s for s, _h, _b in results] == [200] * 8
    assert fleet.nodes["pair"].stats["max_in_flight"][MODEL] == 2


async def test_a_request_waits_for_a_busy_node_and_completes_when_it_frees(
        sims, herd_router, herd_agent):
    fleet = await sims(profile("busy"))
    node = fleet.nodes["busy"]
    router = await herd_over(fleet, herd_router, herd_agent, parallel=1)
    async with aiohttp.ClientSession() as http:
        first = await occupy(http, router, node)  # holds the slot until cleared
        second = asyncio.ensure_future(post(http, router.url, {**CHAT, "stream": False}))
        await wait_for(lambda: router.services.queues.waiting_total == 1)
        async with http.get(f"{router.url}/fleet/queue") as r:
            lane = (await r.json())["queues"][f"busy:{MODEL}"]
        assert (lane["in_flight"], lane["pending"]) == (1, 1)
        assert chats(node) == 1  # the second has not reached the node
        node.clear_faults()
        (s1, _h1, _b1), (s2, h2, b2) = await asyncio.gather(first, second)
    assert (s1, s2) == (200, 200)
    assert json.loads(b2)["done"] is True
    assert int(h2["X-Fleet-Queued-Ms"]) > 0 and h2["X-Fleet-Node"] == "busy"
    assert chats(node) == 2 and node.stats["max_in_flight"][MODEL] == 1


async def test_held_while_no_node_can_serve_then_served_when_one_returns(
        sims, herd_router, herd_agent):
    fleet = await sims(profile("away"))
    node = fleet.nodes["away"]
    router = await herd_router(env={"FLEET_REBALANCE_INTERVAL": "0.05"})
    agent = await herd_agent(router.url, node.url, "away", interval=0.1)
    await wait_for(lambda: router.services.fleet.nodes["away"].available)
    agent.stop()  # drains: offline at once, but the router still knows it has the model
    await wait_for(lambda: router.services.fleet.nodes["away"].status == "offline")
    async with aiohttp.ClientSession() as http:
        pending = asyncio.ensure_future(post(http, router.url, {**CHAT, "stream": False}))
        await wait_for(lambda: len(router.services.queues.held) == 1)
        async with http.get(f"{router.url}/fleet/status") as r:
            assert (await r.json())["holding"] == 1
        await herd_agent(router.url, node.url, "away", interval=0.1)  # back: re-scored at once
        status, headers, body = await pending
    assert status == 200 and headers["X-Fleet-Node"] == "away"
    assert json.loads(body)["message"]["role"] == "assistant"
    assert not router.services.queues.held


async def test_hold_timeout_is_503_json_with_retry_after(sims, herd_router, herd_agent):
    fleet = await sims(profile("full"))
    node = fleet.nodes["full"]
    router = await herd_over(fleet, herd_router, herd_agent, parallel=1,
                             env={"FLEET_HOLD_TIMEOUT": "0.3"})
    async with aiohttp.ClientSession() as http:
        first = await occupy(http, router, node)
        async with http.post(f"{router.url}/v1/chat/completions",
                             json={"model": MODEL, "messages": CHAT["messages"]}) as r:
            assert r.status == 503
            assert int(r.headers["Retry-After"]) >= 1
            error = (await r.json())["error"]
        node.clear_faults()
        assert (await first)[0] == 200
    assert "within 0.3 s" in error["message"] and "busy" in error["message"]
    assert router.services.queues.timeouts_total == 1
    assert chats(node) == 1 and node.stats["requests"].get("/v1/chat/completions", 0) == 0


async def test_a_full_queue_answers_503_at_once_in_ollamas_words(sims, herd_router, herd_agent):
    fleet = await sims(profile("packed"))
    node = fleet.nodes["packed"]
    router = await herd_over(fleet, herd_router, herd_agent, parallel=1,
                             env={"FLEET_MAX_QUEUE": "1"})
    async with aiohttp.ClientSession() as http:
        first = await occupy(http, router, node)
        waiting = asyncio.ensure_future(post(http, router.url, {**CHAT, "stream": False}))
        await wait_for(lambda: router.services.queues.waiting_total == 1)
        status, headers, body = await post(http, router.url, {**CHAT, "stream": False})
        node.clear_faults()
        assert (await first)[0] == 200 and (await waiting)[0] == 200
    assert status == 503 and int(headers["Retry-After"]) >= 1
    assert json.loads(body) == {
        "error": "server busy, please try again.  maximum pending requests exceeded"}
    assert "x-should-retry" not in headers  # nothing was waited for: a client may retry
    assert chats(node) == 2


async def test_the_openai_sdk_sees_a_503_and_does_not_retry_on_its_own(
        sims, herd_router, herd_agent):
    """The router already waited FLEET_HOLD_TIMEOUT for the client; the SDK's own retries (two by
    default) would triple that, so the 503 says x-should-retry: false, which the SDK honours."""
    fleet = await sims(profile("sdk"))
    node = fleet.nodes["sdk"]
    router = await herd_over(fleet, herd_router, herd_agent, parallel=1,
                             env={"FLEET_HOLD_TIMEOUT": "0.2"})
    async with aiohttp.ClientSession() as http:
        first = await occupy(http, router, node)
        client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused")  # 2 retries
        try:
            with pytest.raises(openai.InternalServerError) as caught:
                await client.chat.completions.create(model=MODEL, messages=CHAT["messages"])
        finally:
            await client.close()
        node.clear_faults()
        assert (await first)[0] == 200
    assert caught.value.status_code == 503
    assert router.services.queues.timeouts_total == 1  # one attempt, not three


async def test_a_client_that_leaves_while_waiting_never_reaches_a_node(
        sims, herd_router, herd_agent):
    fleet = await sims(profile("gate"))
    node = fleet.nodes["gate"]
    router = await herd_over(fleet, herd_router, herd_agent, parallel=1)
    async with aiohttp.ClientSession() as http:
        first = await occupy(http, router, node)
        async with aiohttp.ClientSession() as leaver:
            quitter = asyncio.ensure_future(post(leaver, router.url, {**CHAT, "stream": False}))
            await wait_for(lambda: router.services.queues.waiting_total == 1)
            quitter.cancel()
            await asyncio.gather(quitter, return_exceptions=True)
        await wait_for(lambda: router.services.queues.waiting_total == 0)
        node.clear_faults()
        assert (await first)[0] == 200
        # the slot is free again and the next request runs at once
        status, headers, _ = await post(http, router.url, {**CHAT, "stream": False})
    assert status == 200 and "X-Fleet-Queued-Ms" not in headers
    assert chats(node) == 2  # the first and the last: the one that left never arrived
    traces = [t for t in router.services.recent_traces if t.status == "client_disconnected"]
    assert len(traces) == 1 and traces[0].node_id is None


async def test_deep_queue_prewarms_the_runner_up_and_the_rebalancer_moves_work_there(
        sims, herd_router, herd_agent):
    fleet = await sims(profile("hot"), profile("spare", loaded=()))
    spare = fleet.nodes["spare"]
    # thermal alone: every request prefers the hot node, however long its queue
    router = await herd_over(fleet, herd_router, herd_agent, parallel=1,
                             plugins="signal-thermal,backend-ollama,policy-*",
                             env={"FLEET_PREWARM_DEPTH": "2"})
    async with aiohttp.ClientSession() as http:
        first = await occupy(http, router, fleet.nodes["hot"])
        rest = [asyncio.ensure_future(post(http, router.url, CHAT)) for _ in range(4)]
        # pre-warm: an empty generate loads the model on the runner-up, as Ollama does
        async def spare_ps():
            async with http.get(f"{spare.url}/api/ps") as r:
                return [m["name"] for m in (await r.json())["models"]]

        await wait_for(lambda: spare.stats["requests"].get("/api/generate", 0) == 1)
        await wait_for(spare_ps)  # loading takes (simulated) time
        assert await spare_ps() == [MODEL]
        done = await asyncio.gather(*rest)
        fleet.nodes["hot"].clear_faults()
        assert (await first)[0] == 200
    assert [s for s, _h, _b in done] == [200] * 4
    served = {h["X-Fleet-Node"] for _s, h, _b in done}
    assert "spare" in served  # waiters moved to the node that was warmed for them
    queues = router.services.queues
    assert queues.prewarms_total == 1 and queues.moved_total >= 1
    assert [e["node_id"] for e in router.services.events if e["kind"] == "prewarm"] == ["spare"]


@pytest.mark.parametrize("stream", [True, False])
async def test_the_reaper_clears_a_request_that_stopped_making_progress(
        sims, herd_router, herd_agent, stream):
    fleet = await sims(profile("stuck"))
    node = fleet.nodes["stuck"]
    router = await herd_over(fleet, herd_router, herd_agent, parallel=1,
                             env={"FLEET_STALE_TIMEOUT": "0.3", "FLEET_MAX_RETRIES": "0"})
    node.set_fault(Fault(kind="stall", count=1, after_chunks=1 if stream else 0))
    async with aiohttp.ClientSession() as http:
        status, _headers, body = await post(http, router.url, {**CHAT, "stream": stream})
        async with http.get(f"{router.url}/fleet/queue") as r:
            queue = await r.json()
        # the reaped slot is free: the next request is served at once
        again, headers, _ = await post(http, router.url, {**CHAT, "stream": False})
    lines = body.decode().strip().splitlines()
    if stream:  # the stream had begun: it ends with an error line in its own format
        assert status == 200 and "no progress" in json.loads(lines[-1])["error"]
    else:  # nothing had been sent: the client gets a JSON error, never a hang
        assert status == 502 and "no progress" in json.loads(body)["error"]
    lane = queue["queues"][f"stuck:{MODEL}"]
    assert (lane["in_flight"], lane["reaped"], lane["failed"]) == (0, 1, 1)
    assert queue["totals"]["reaped"] == 1
    assert again == 200 and "X-Fleet-Queued-Ms" not in headers
    node.clear_faults()


async def test_fleet_status_carries_the_same_queue_numbers(sims, herd_router, herd_agent):
    fleet = await sims(profile("n1"))
    router = await herd_over(fleet, herd_router, herd_agent, parallel=3)
    async with aiohttp.ClientSession() as http:
        assert (await post(http, router.url, CHAT))[0] == 200
        async with http.get(f"{router.url}/fleet/queue") as r:
            queue = await r.json()
        async with http.get(f"{router.url}/fleet/status") as r:
            status = await r.json()
    key = f"n1:{MODEL}"
    assert status["queues"][key] == queue["queues"][key]
    assert queue["queues"][key]["limit"] == 3 and queue["queues"][key]["completed"] == 1
    assert queue["models"][MODEL]["slots_free"] == 3
    assert queue["models"][MODEL]["estimated_wait_s"] == 0.0


@pytest.mark.parametrize(("slowdown", "lowered"), [(1.0, True), (0.1, False)])
async def test_concurrency_follows_measured_throughput(sims, herd_router, herd_agent, slowdown,
                                                       lowered):
    """A node whose requests only slow each other down (slowdown 1.0: four at once take four
    times as long each) gets a lower limit; one where running side by side pays keeps its four."""
    fleet = await sims(profile("tuned", parallel_slowdown=slowdown), time_scale=0.2)
    router = await herd_over(fleet, herd_router, herd_agent, parallel=4)
    body = {**CHAT, "stream": False, "options": {"num_predict": 24}}
    async with aiohttp.ClientSession() as http:
        for _ in range(9):  # alone: the baseline time per token
            assert (await post(http, router.url, body))[0] == 200
        for _ in range(3):  # four at a time
            results = await asyncio.gather(*(post(http, router.url, body) for _ in range(4)))
            assert [s for s, _h, _b in results] == [200] * 4
        async with http.get(f"{router.url}/fleet/queue") as r:
            lane = (await r.json())["queues"][f"tuned:{MODEL}"]
    if lowered:
        assert lane["limit"] < 4
    else:
        assert lane["limit"] == 4 and lane["throughput_gain"] > 2
