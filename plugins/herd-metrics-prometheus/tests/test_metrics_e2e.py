"""``/metrics`` on a real router after real traffic through the simulator, read back with
Prometheus' own parser; with client keys set, a scraper from elsewhere needs one."""

from __future__ import annotations

import aiohttp
import attrs
import pytest
from herd_sim import PROFILES, Fault, SimFleet
from prometheus_client.parser import text_string_to_metric_families

from herd_kernel.testing import wait_for

MODEL = "llama3.2:3b"
OTHER = "qwen2.5:7b"
HOSTILE = 'beta"} 1 # herd_fake{le="\\'  # heartbeats allow any printable node id


@pytest.fixture
async def fleet():
    def profile(name):
        return attrs.evolve(PROFILES["medium"], name=name, loaded=(MODEL,), models=(MODEL, OTHER),
                            tokens_per_s=2000.0, num_parallel=2)

    sim = SimFleet([profile("alpha"), profile("beta")], time_scale=0.01)
    await sim.start()
    yield sim
    await sim.stop()


async def scrape(http, url, **kw):
    async with http.get(f"{url}/metrics", **kw) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await r.text()
        return {f.name: f.samples for f in text_string_to_metric_families(text)}


async def test_metrics_after_real_traffic_parse_with_prometheus_own_parser(
        fleet, herd_router, herd_agent):
    router = await herd_router(env={"FLEET_API_KEYS": "k1", "FLEET_ENROLL_MINUTES": "0",
                                    "FLEET_HEALTH_CACHE_S": "0"})
    await herd_agent(router.url, fleet.nodes["alpha"].url, "alpha")
    await herd_agent(router.url, fleet.nodes["beta"].url, HOSTILE)
    await wait_for(lambda: len(router.services.fleet.nodes) == 2 and all(
        n.available for n in router.services.fleet.nodes.values()))
    key = {"Authorization": "Bearer k1"}
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
            "options": {"num_predict": 4}}
    async with aiohttp.ClientSession() as http:
        for stream in (False, True, False, True):
            async with http.post(f"{router.url}/api/chat", json={**chat, "stream": stream},
                                 headers=key) as r:
                assert r.status == 200
                await r.read()
        async with http.post(f"{router.url}/v1/chat/completions", headers=key, json={
                "model": MODEL, "messages": chat["messages"], "max_tokens": 4}) as r:
            assert r.status == 200
        async with http.post(f"{router.url}/api/chat", json={**chat, "model": "nope:1b"},
                             headers=key) as r:
            assert r.status == 404
        # both nodes fail once before the first byte: retried on the other, then a 502
        for node in fleet.nodes.values():
            node.set_fault(Fault(kind="http500", count=1))
        async with http.post(f"{router.url}/api/chat", json={**chat, "stream": False},
                             headers=key) as r:
            assert r.status == 502
        # a model that is in no node's memory, asked for as a fallback: a fallback, and a
        # model_loaded routing event once the node's next heartbeat reports it
        async with http.post(f"{router.url}/api/chat", headers=key, json={
                **chat, "stream": False, "model": "nope:1b", "fallback_models": [OTHER]}) as r:
            assert r.status == 200
        await wait_for(lambda: any(e["kind"] == "model_loaded"
                                   for e in router.services.events))
        await wait_for(lambda: len(router.services.recent_traces) >= 8)
        families = await scrape(http, router.url)  # from this machine: the owner

        router.services.admission.is_loopback_peer = lambda peer: False  # a scraper elsewhere
        async with http.get(f"{router.url}/metrics") as r:
            assert r.status == 401
        assert await scrape(http, router.url, headers=key)

    requests = {(s.labels["route"], s.labels["node"], s.labels["status"], s.labels["code"]):
                s.value for s in families["herd_requests"] if s.labels["model"] == MODEL}
    served = {node for (_route, node, status, _code) in requests if status == "completed"}
    assert served and served <= {"alpha", HOSTILE}
    assert sum(n for (route, _node, status, code), n in requests.items()
               if (route, status, code) == ("/api/chat", "completed", "200")) == 4
    assert sum(n for (route, _node, _s, _c), n in requests.items()
               if route == "/v1/chat/completions") == 1
    assert requests[("/api/chat", "", "failed", "502")] == 1
    [missing] = [s for s in families["herd_requests"] if s.labels["model"] == "nope:1b"]
    assert missing.labels["status"] == "rejected" and missing.labels["code"] == "404"
    durations = {s.labels["model"]: s.value for s in families["herd_request_duration_seconds"]
                 if s.name.endswith("_count")}
    assert durations == {MODEL: 5, OTHER: 1}
    ttft = [s for s in families["herd_time_to_first_token_seconds"]
            if s.name.endswith("_count")]
    assert [s.value for s in ttft] == [2]  # the two streams
    tokens = {s.labels["direction"]: s.value for s in families["herd_tokens"]
              if s.labels["model"] == MODEL}
    assert tokens["in"] > 0 and tokens["out"] > 0
    assert families["herd_retried_requests"][0].value == 1
    assert sum(s.value for s in families["herd_retries"]) == 1
    assert [(s.labels, s.value) for s in families["herd_fallbacks"]] == [({"model": "nope:1b"}, 1)]
    events = {s.labels["kind"]: s.value for s in families["herd_routing_events"]}
    assert events.get("model_loaded", 0) >= 1
    status = {(s.labels["node"], s.labels["status"]): s.value
              for s in families["herd_node_status"]}
    assert status[("alpha", "online")] == 1 and status[(HOSTILE, "online")] == 1
    assert status[(HOSTILE, "offline")] == 0
    lanes = {(s.labels["node"], s.labels["model"]) for s in families["herd_queue_limit"]}
    assert {("alpha", MODEL), (HOSTILE, MODEL)} <= lanes
    assert not [name for name in families if "fake" in name]  # the node name forged nothing
    waits = [s for s in families["herd_queue_wait_seconds"] if s.name.endswith("_count")]
    assert sum(s.value for s in waits) == 6  # every request that reached a node
    assert families["herd_health_score"][0].value == 100
    if router.services.health.snapshot().trace_store:  # a router with a trace store
        assert families["herd_trace_store_failed"][0].value == 0
