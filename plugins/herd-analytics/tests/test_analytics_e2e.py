"""End to end: a real router with a real node agent in front of the simulated fleet; traffic with
app tags, one failure, one request for a missing model. Then the fleet skill's commands, as a user
types them: its curl calls (docs/analytics.md quotes them) and its sqlite3 queries on the store's
file, and the APIs show what was sent."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sqlite3
from pathlib import Path

import aiohttp
import attrs
import pytest
from herd_analytics import store_of
from herd_sim import PROFILES, Fault, SimFleet

from herd_kernel.testing import wait_for

MODEL = "llama3.2:3b"
DOC = Path(__file__).resolve().parents[3] / "docs" / "analytics.md"
SKILL_CURLS = [
    'curl -s http://localhost:11435/dashboard/api/usage',
    'curl -s "http://localhost:11435/dashboard/api/traces?limit=20"',
    'curl -s http://localhost:11435/dashboard/api/models',
    'curl -s http://localhost:11435/dashboard/api/apps',
]
SKILL_SQL = [
    "SELECT request_id, model, status, error_message, latency_ms/1000.0 as secs FROM "
    "request_traces WHERE status='failed' ORDER BY timestamp DESC LIMIT 10",
    "SELECT model, node_id, latency_ms/1000.0 as secs, prompt_tokens, completion_tokens FROM "
    "request_traces WHERE status='completed' ORDER BY latency_ms DESC LIMIT 10",
    "SELECT j.value as tag, COUNT(*) as requests, SUM(COALESCE(prompt_tokens,0)+"
    "COALESCE(completion_tokens,0)) as tokens FROM request_traces, json_each(tags) j WHERE tags "
    "IS NOT NULL GROUP BY j.value ORDER BY tokens DESC",
]


@pytest.fixture
async def traffic(herd_router, herd_agent, tmp_path):
    """Twelve chats through the router (two apps, one untagged), one failed by its node, one for
    a model nobody has; the router, its data dir, and the simulated node."""
    profile = attrs.evolve(PROFILES["medium"], name="studio", loaded=(MODEL,), models=(MODEL,),
                           tokens_per_s=2000.0, num_parallel=4)
    fleet = SimFleet([profile], time_scale=0.01)
    await fleet.start()
    data = tmp_path / "data"
    router = await herd_router(plugins="backend-ollama,analytics",
                               env={"FLEET_DATA_DIR": str(data)})
    await herd_agent(router.url, fleet.nodes["studio"].url, "studio")
    await wait_for(lambda: "studio" in router.services.fleet.nodes
                   and router.services.fleet.nodes["studio"].loaded)

    async def chat(http, i, headers=None, tags=None, model=MODEL):
        body = {"model": model, "stream": i % 2 == 0, "options": {"num_predict": 5},
                "messages": [{"role": "user", "content": f"hello {i}"}]}
        if tags:
            body["metadata"] = {"tags": tags}
        async with http.post(f"{router.url}/api/chat", json=body,
                             headers={"X-Request-Id": f"req-{i}", **(headers or {})}) as r:
            await r.read()
            return r.status

    async with aiohttp.ClientSession() as http:
        statuses = await asyncio.gather(
            *(chat(http, i, headers={"X-App-Tag": "aider"}) for i in range(5)),
            *(chat(http, i, tags=["nightly"]) for i in range(5, 9)),
            *(chat(http, i) for i in range(9, 12)))
        assert statuses == [200] * 12
        fleet.nodes["studio"].set_fault(Fault(kind="http500", count=3))
        assert await chat(http, 12, headers={"X-App-Tag": "aider"}) == 502
        fleet.nodes["studio"].clear_faults()
        assert await chat(http, 13, model="nowhere:1b") == 404
    await store_of(router.services).flush()
    yield router, data, fleet
    await fleet.stop()


async def api(router, path):
    async with aiohttp.ClientSession() as http:
        async with http.get(router.url + path) as r:
            assert r.status == 200, (path, await r.text())
            return await r.json()


async def test_the_apis_show_the_traffic(traffic):
    router, _data, _fleet = traffic
    traces = (await api(router, "/dashboard/api/traces?limit=20"))["traces"]
    assert sorted(t["request_id"] for t in traces) == sorted(f"req-{i}" for i in range(14))
    by_id = {t["request_id"]: t for t in traces}
    assert by_id["req-0"]["node_id"] == "studio" and by_id["req-0"]["tags"] == ["aider"]
    assert by_id["req-5"]["tags"] == ["nightly"]
    assert by_id["req-0"]["completion_tokens"] == 5 and by_id["req-0"]["score"] is not None
    assert by_id["req-12"]["status"] == "failed" and "500" in by_id["req-12"]["error_message"]
    assert by_id["req-12"]["excluded_nodes"] == ["studio"]
    assert by_id["req-13"]["status"] == "rejected" and by_id["req-13"]["node_id"] is None

    usage = await api(router, "/dashboard/api/usage?days=1")
    rows = {(r["node_id"], r["model"]): r for r in usage["data"]}
    assert rows[("studio", MODEL)]["request_count"] == 12
    assert rows[("studio", MODEL)]["completed_count"] == 12
    # a request every node failed has no node of its own (its attempts name them)
    assert rows[(None, MODEL)]["failed_count"] == 1
    assert rows[(None, "nowhere:1b")]["rejected_count"] == 1
    assert rows[("studio", MODEL)]["total_completion_tokens"] == 60

    models = {m["model_name"]: m for m in (await api(router, "/dashboard/api/models"))["summary"]}
    llama = models[MODEL]
    assert llama["total_requests"] == 13 and llama["failed_count"] == 1
    assert 0 < llama["p50_latency_ms"] <= llama["p99_latency_ms"]
    assert llama["tokens_per_s"] > 0 and llama["nodes"][0]["node_id"] == "studio"

    apps = {a["tag"]: a for a in (await api(router, "/dashboard/api/apps"))["data"]}
    assert set(apps) == {"aider", "nightly"}
    assert apps["aider"]["request_count"] == 6 and apps["aider"]["failed_count"] == 1
    assert apps["aider"]["error_rate"] == pytest.approx(1 / 6, abs=1e-4)
    assert apps["nightly"]["request_count"] == 4 and apps["nightly"]["error_rate"] == 0

    trends = await api(router, "/dashboard/api/trends?hours=24")
    assert sum(h["request_count"] for h in trends["data"]) == 14
    assert sum(h["total_completion_tokens"] for h in trends["data"]) == 60

    status = await api(router, "/fleet/status")
    assert status["trace_store"] == {"written": 14, "dropped": 0, "failed": 0, "queued": 0}


def test_the_docs_quote_the_skills_commands():
    text = DOC.read_text()
    for command in SKILL_CURLS:
        assert command in text, command
    for query in SKILL_SQL:
        assert f'sqlite3 ~/.fleet-manager/latency.db "{query}"' in text, query


async def test_the_skills_curl_commands_work_as_written(traffic):
    router, _data, _fleet = traffic
    port = router.url.rsplit(":", 1)[1]
    answers = []
    for command in SKILL_CURLS:
        url = re.search(r"http://localhost:11435(\S+?)\"?$", command).group(1)
        if shutil.which("curl"):  # the command itself, with the test router's port
            proc = await asyncio.create_subprocess_exec(
                "curl", "-s", f"http://127.0.0.1:{port}{url}", stdout=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
            assert proc.returncode == 0
            answers.append(json.loads(out))
        else:
            answers.append(await api(router, url))
    usage, traces, models, apps = answers
    assert {r["model"] for r in usage["data"]} == {MODEL, "nowhere:1b"}
    assert len(traces["traces"]) == 14
    assert {"daily", "summary"} <= set(models)
    assert {a["tag"] for a in apps["data"]} == {"aider", "nightly"}


async def test_the_skills_sqlite_queries_work_on_the_stores_file(traffic):
    _router, data, _fleet = traffic
    db = sqlite3.connect(data / "latency.db")  # ~/.fleet-manager/latency.db by default
    failed, slowest, tags = (db.execute(query).fetchall() for query in SKILL_SQL)
    assert [(r[0], r[1], r[2]) for r in failed] == [("req-12", MODEL, "failed")]
    assert "500" in failed[0][3] and failed[0][4] > 0
    assert len(slowest) == 10 and all(r[0] == MODEL and r[1] == "studio" for r in slowest)
    assert [r[2] for r in slowest] == sorted((r[2] for r in slowest), reverse=True)
    assert all(r[4] == 5 for r in slowest)
    assert {r[0]: r[1] for r in tags} == {"aider": 6, "nightly": 4}
