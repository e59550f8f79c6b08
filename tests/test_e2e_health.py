"""The health engine end to end: a real router, real node agents and simulated Ollama nodes over
loopback sockets, read through ``GET /dashboard/api/health`` as the dashboard reads it. Every
installed plugin is loaded (as in production), plus a check of the test's own that flags offline
nodes."""

from __future__ import annotations

import aiohttp
import attrs
import pytest
from herd_sim import PROFILES, Fault
from pluggy import HookimplMarker

from herd_kernel.api import Finding
from herd_kernel.testing import wait_for

hookimpl = HookimplMarker("herd")
MODEL = "llama3.2:3b"
OTHER = "qwen2.5:7b"  # on alpha's disk only, in nobody's memory: a request for it loads it
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
        "options": {"num_predict": 8}}


class OfflineCheck:
    id = "e2e_offline"
    title = "Offline nodes"

    def evaluate(self, snapshot):
        return [Finding(check_id=self.id, severity="warning", title=f"{n['node_id']} is offline",
                        detail=f"no heartbeat for {n['last_heartbeat_s_ago']} s",
                        advice="start its agent", node_id=n["node_id"])
                for n in snapshot.status["nodes"] if n["status"] == "offline"]


class OfflineChecks:
    @hookimpl
    def herd_health_checks(self, config):
        return [OfflineCheck()]


class Crashing:
    class Check:
        id = "e2e_crashes"
        title = "Always crashes"

        def evaluate(self, snapshot):
            return [snapshot.status["no such key"]]

    @hookimpl
    def herd_health_checks(self, config):
        return [self.Check()]


def profile(name: str, models: tuple[str, ...]):
    return attrs.evolve(PROFILES["medium"], name=name, loaded=(MODEL,), models=models,
                        tokens_per_s=2000.0, num_parallel=4)


@pytest.fixture
async def fleet(sim_fleet):
    return await sim_fleet(profile("alpha", (MODEL, OTHER)), profile("beta", (MODEL,)),
                           time_scale=0.01)


async def start(fleet, herd_router, herd_agent, **env):
    router = await herd_router(extra=[OfflineChecks()], env={"FLEET_HEALTH_CACHE_S": "0", **env})
    agents = {name: await herd_agent(router.url, node.url, name, interval=0.1)
              for name, node in fleet.nodes.items()}
    await wait_for(lambda: len(router.services.fleet.nodes) == 2
                   and all(n.loaded for n in router.services.fleet.nodes.values()))
    return router, agents


async def health(router, **headers):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{router.url}/dashboard/api/health", headers=headers) as r:
            assert r.status == 200, await r.text()
            return await r.json()


async def chat(router, body, expect=200):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/api/chat", json=body) as r:
            payload = await r.read()
            assert r.status == expect, payload
            return payload


def loud(report):
    return [c for c in report["checks"] if c["severity"] != "info"]


async def test_a_fleet_at_rest_scores_100_with_no_warnings(fleet, herd_router, herd_agent):
    router, _agents = await start(fleet, herd_router, herd_agent)
    for stream in (False, True, False):
        await chat(router, {**CHAT, "stream": stream})
    report = await health(router)
    assert loud(report) == [] and report["score"] == 100
    assert report["checks_run"] >= 1
    vitals = report["vitals"]
    assert (vitals["nodes_total"], vitals["nodes_online"], vitals["nodes_offline"]) == (2, 2, 0)
    assert (vitals["requests_24h"], vitals["error_rate_pct"], vitals["retries_24h"]) == \
        (3, 0.0, 0)
    assert vitals["avg_ttft_ms"] > 0  # the streamed one had a first token
    assert set(vitals) == {"nodes_total", "nodes_online", "nodes_degraded", "nodes_offline",
                           "nodes_pending", "error_rate_pct", "cold_loads_24h", "avg_ttft_ms",
                           "requests_24h", "retries_24h", "client_disconnects_24h",
                           "incomplete_streams_24h", "timeouts_24h"}


async def test_a_silent_node_is_reported_offline_within_the_heartbeat_timeout(
        fleet, herd_router, herd_agent):
    router, agents = await start(fleet, herd_router, herd_agent, FLEET_HEARTBEAT_TIMEOUT="1.0",
                                 FLEET_HEARTBEAT_OFFLINE="2.0")
    assert (await health(router))["vitals"]["nodes_offline"] == 0

    async def no_goodbye():  # killed, not stopped: it never says it is draining
        return None

    agents["beta"].drain = no_goodbye
    agents["beta"].stop()
    await fleet.nodes["beta"].stop()
    reports = []

    async def offline_reported():
        reports.append(await health(router))
        return any(c["check_id"] == "e2e_offline" and c["node_id"] == "beta"
                   for c in reports[-1]["checks"])

    await wait_for(offline_reported, timeout=10)
    report = reports[-1]
    [finding] = [c for c in report["checks"] if c["node_id"] == "beta"
                 and c["check_id"] == "e2e_offline"]
    assert finding["severity"] == "warning" and finding["title"] == "beta is offline"
    assert finding["fix"] == "start its agent" and "no heartbeat for" in finding["description"]
    vitals = report["vitals"]  # alpha still reports (degraded at worst on a loaded machine)
    assert vitals["nodes_offline"] == 1 and vitals["nodes_online"] + vitals["nodes_degraded"] == 1
    assert report["score"] <= 90
    # the real check (herd-health-offline) says it in the same report, loudly: beta was killed,
    # it did not say goodbye
    [real] = [c for c in report["checks"] if c["check_id"] == "node_offline"]
    assert (real["node_id"], real["severity"], real["title"]) == ("beta", "critical",
                                                                  "beta is offline")


async def test_injected_errors_move_the_vitals(fleet, herd_router, herd_agent):
    router, _agents = await start(fleet, herd_router, herd_agent)
    for node in fleet.nodes.values():
        node.set_fault(Fault(kind="http500", count=1))
    await chat(router, {**CHAT, "stream": False}, expect=502)  # both nodes tried, both failed
    for node in fleet.nodes.values():
        node.clear_faults()
        node.set_fault(Fault(kind="drop_mid_stream", count=1, after_chunks=2))
    await chat(router, {**CHAT, "stream": True})  # the stream ends with an in-stream error
    for node in fleet.nodes.values():
        node.clear_faults()
    await chat(router, {**CHAT, "stream": False})

    vitals = (await health(router))["vitals"]
    assert vitals["requests_24h"] == 3
    assert vitals["error_rate_pct"] == pytest.approx(200 / 3, abs=0.01)
    assert (vitals["retries_24h"], vitals["incomplete_streams_24h"]) == (1, 1)
    assert (vitals["timeouts_24h"], vitals["cold_loads_24h"]) == (0, 0)
    day = router.services.health.snapshot().day
    assert day.total.failed == 2 and day.total.retried == 1 and day.total.completed == 1


async def test_a_cold_load_is_counted_and_its_load_becomes_an_event(
        fleet, herd_router, herd_agent):
    router, _agents = await start(fleet, herd_router, herd_agent)
    await chat(router, {**CHAT, "model": OTHER, "stream": False})
    assert router.services.recent_traces[-1].details.get("cold") is True
    await chat(router, {**CHAT, "model": OTHER, "stream": False})  # now in memory: not cold
    assert "cold" not in router.services.recent_traces[-1].details
    # the next heartbeat reports the model loaded: a routing event the thrashing check reads
    await wait_for(lambda: any(e["kind"] == "model_loaded" and e["node_id"] == "alpha"
                               and e["model"] == OTHER for e in router.services.events))
    report = await health(router)
    assert (report["vitals"]["cold_loads_24h"], report["vitals"]["requests_24h"]) == (1, 2)
    hour = router.services.health.snapshot().hour
    assert hour.node_events["alpha"]["model_loaded"] >= 1
    assert hour.by_model[OTHER].cold_loads == 1 and hour.by_node["alpha"].cold_loads == 1


async def test_timeouts_are_counted_where_they_happen(fleet, herd_router, herd_agent):
    router, _agents = await start(fleet, herd_router, herd_agent, FLEET_READ_TIMEOUT="1.0")
    for node in fleet.nodes.values():  # whichever node serves, it goes silent after a chunk
        node.set_fault(Fault(kind="stall", count=1, after_chunks=1))
    await chat(router, {**CHAT, "stream": True})
    streamed = router.services.recent_traces[-1]
    assert streamed.status == "failed" and streamed.details["timeout"] is True
    for node in fleet.nodes.values():  # silent before answering: each attempt times out
        node.clear_faults()
        node.set_fault(Fault(kind="stall", count=1, after_chunks=0))
    await chat(router, {**CHAT, "stream": False}, expect=502)
    whole = router.services.recent_traces[-1]
    assert len(whole.attempts) == 2 and whole.details["timeout"] is True
    for node in fleet.nodes.values():
        node.clear_faults()

    vitals = (await health(router))["vitals"]
    assert (vitals["timeouts_24h"], vitals["incomplete_streams_24h"]) == (2, 1)
    assert (vitals["requests_24h"], vitals["retries_24h"]) == (2, 1)


async def test_a_crashing_check_is_a_finding_naming_its_plugin_behind_the_fleet_guard(
        herd_router):
    router = await herd_router(plugins="backend-ollama", extra=[Crashing(), OfflineChecks()],
                               env={"FLEET_ADMIN_KEY": "k3y", "FLEET_HEALTH_CACHE_S": "0"})
    report = await health(router)
    [crashed] = report["checks"]
    assert crashed["check_id"] == "check_crashed" and crashed["severity"] == "warning"
    assert "'Crashing'" in crashed["title"] and "'e2e_crashes'" in crashed["title"]
    assert crashed["description"].startswith("KeyError")
    assert report["score"] == 90 and report["checks_run"] == 2
    router.services.admission.is_loopback_peer = lambda peer: False  # from elsewhere
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{router.url}/dashboard/api/health") as r:
            assert r.status == 401 and "admin key" in (await r.json())["error"]
    assert (await health(router, Authorization="Bearer k3y"))["score"] == 90


async def test_a_node_failing_a_third_of_its_requests_raises_the_error_rate_check(
        fleet, herd_router, herd_agent):
    # OTHER is on alpha's disk only, so every request for it is alpha's to serve or fail
    router, _agents = await start(fleet, herd_router, herd_agent,
                                  FLEET_HEALTH_ERROR_RATE_MIN_REQUESTS="9")
    body = {**CHAT, "model": OTHER, "stream": False}
    before = (await health(router))["score"]
    for i in range(9):
        if i % 3 == 2:
            fleet.nodes["alpha"].set_fault(Fault(kind="http500", count=1))
            await chat(router, body, expect=502)
        else:
            await chat(router, body)
    report = await health(router)
    [finding] = [c for c in report["checks"] if c["check_id"] == "high_error_rate"]
    assert finding["node_id"] == "alpha"
    assert finding["severity"] == "critical"  # 33% is past the default 30% critical line
    assert "3 of 9" in finding["description"]
    assert report["score"] < before == 100
    assert report["vitals"]["error_rate_pct"] == pytest.approx(100 / 3, abs=0.01)
