"""Lane policies as the queue sees them: a broken one cannot break routing, and the queue calls
only the callbacks a policy defines."""

from __future__ import annotations

import asyncio

import aiohttp
import attrs
from herd_sim import PROFILES
from structlog.testing import capture_logs

from herd_kernel.fleet import Fleet
from herd_kernel.hookspecs import hookimpl
from herd_kernel.latency import LatencyHistory
from herd_kernel.models import Heartbeat, RouteRequest, structure
from herd_kernel.queues import QueueManager
from herd_kernel.scoring import Scorer
from herd_kernel.testing import heartbeat_payload, make_config, wait_for

MODEL = "llama3.2:3b"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}],
        "options": {"num_predict": 12}}
CALLBACKS = {"limit", "finished", "waiting", "pump", "tick", "describe"}


class Broken:
    """A policy whose every callback raises."""

    name = "broken"

    def _boom(self, *args):
        raise RuntimeError("policy bug")

    limit = finished = waiting = pump = tick = describe = _boom


class BrokenPlugin:
    @hookimpl
    def herd_lane_policies(self, config):
        return [Broken()]


async def test_a_policy_that_raises_everywhere_does_not_break_routing(
        sim_fleet, herd_router, herd_agent):
    fleet = await sim_fleet(attrs.evolve(PROFILES["medium"], name="solo", loaded=(MODEL,),
                                         models=(MODEL,), num_parallel=4), time_scale=0.1)
    node = fleet.nodes["solo"]
    with capture_logs() as logs:
        router = await herd_router(env={"FLEET_REBALANCE_INTERVAL": "0.05"},
                                   extra=[BrokenPlugin()])
        await herd_agent(router.url, node.url, "solo", interval=0.1,
                         env={"FLEET_NODE_OLLAMA_NUM_PARALLEL": "1"})
        await wait_for(lambda: "solo" in router.services.fleet.nodes
                       and router.services.fleet.nodes["solo"].available)
        async with aiohttp.ClientSession() as http:

            async def chat(stream):
                async with http.post(f"{router.url}/api/chat",
                                     json={**CHAT, "stream": stream}) as r:
                    return r.status, await r.read()

            results = await asyncio.gather(*(chat(i % 2 == 0) for i in range(6)))
            async with http.get(f"{router.url}/fleet/queue") as r:
                queue_status, queue = r.status, await r.json()
            await wait_for(lambda: any(e.get("callback") == "tick" for e in logs))
    assert [status for status, _ in results] == [200] * 6
    assert node.stats["max_in_flight"][MODEL] == 1  # the reported limit held; they queued
    assert queue_status == 200 and queue["queues"][f"solo:{MODEL}"]["completed"] == 6
    failures = [e for e in logs if e["event"] == "lane policy failed; skipped"]
    assert {e["policy"] for e in failures} == {"broken"}
    # every callback was reached, and each is logged once however often it failed
    assert sorted(e["callback"] for e in failures) == sorted(CALLBACKS)


class OnlyLimit:
    name = "only-limit"

    def __init__(self):
        self.calls = 0

    def limit(self, node, lane, limit):
        self.calls += 1
        return min(limit, 2)


async def test_only_the_callbacks_a_policy_defines_are_called():
    fleet = Fleet()
    body = heartbeat_payload("a", loaded=("m",))
    body["endpoints"][0]["num_parallel"] = 4
    fleet.apply_heartbeat(structure(body, Heartbeat))
    config = make_config()
    policy = OnlyLimit()
    queue = QueueManager(fleet, Scorer(fleet, [], config, LatencyHistory()), config,
                         policies=[policy])
    assert [name for name, _ in queue._limiters] == ["only-limit"]
    assert queue._finishers == queue._joiners == queue._pumpers == queue._tickers == []
    route = RouteRequest(model="m", api="ollama", path="/api/chat", stream=True)
    _, first = await queue.acquire(route)
    _, second = await queue.acquire(route)
    assert first.lane.limit == 2 and policy.calls == 2
    first.release(True, 20)
    second.release(True, 20)
    assert queue.snapshot(LatencyHistory())["queues"]["a:m:latest"]["limit"] == 2


async def test_without_policy_plugins_the_reported_limit_applies(herd_router):
    router = await herd_router(plugins="backend-ollama,signal-*")
    assert router.services.queues.policies == []
    embed = {"name": "e", "capabilities": ["embedding"]}
    body = heartbeat_payload("a", loaded=(embed,))
    body["endpoints"][0]["num_parallel"] = 4
    router.services.fleet.apply_heartbeat(structure(body, Heartbeat))
    queues = router.services.queues
    node = router.services.fleet.nodes["a"]
    assert queues.limit_for(node, queues.fleet.lane("a", "e:latest")) == 4  # no embedding rule
