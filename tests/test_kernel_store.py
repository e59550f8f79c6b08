"""The trace store: real SQLite files, the queries users run against them, no lost rows."""

import asyncio
import sqlite3
import time

import aiohttp
import attrs
import pytest
from herd_sim import PROFILES, Fault, SimNode

from herd_kernel.models import Attempt, Trace
from herd_kernel.store import TraceStore


def trace(i, **kw):
    base = dict(request_id=f"r{i}", timestamp=time.time(), model="m:1", api="ollama",
                path="/api/chat", node_id="n", status="completed", http_status=200,
                latency_ms=float(i), original_model="m:1")
    return Trace(**{**base, **kw})


async def test_rows_written_in_batches_and_columns_as_documented(tmp_path):
    store = TraceStore(tmp_path / "latency.db")
    await store.open()
    for i in range(1200):
        store.submit(trace(i))
    store.submit(trace(9999, status="failed", error_message="node n failed", node_id=None,
                       attempts=(Attempt(node_id="n", outcome="HTTP 500", status=500),),
                       retries=1, tags=("app:x",), model="small:1", original_model="big:1"))
    await store.flush()
    await store.close()
    db = sqlite3.connect(tmp_path / "latency.db")
    assert db.execute("SELECT count(*) FROM request_traces").fetchone() == (1201,)
    failed = db.execute("SELECT request_id, model, status, error_message FROM request_traces "
                        "WHERE status='failed' ORDER BY timestamp DESC LIMIT 20").fetchall()
    assert failed == [("r9999", "small:1", "failed", "node n failed")]
    row = db.execute("SELECT retry_count, fallback_used, fallback_model, tags, attempts, "
                     "time_to_first_token_ms FROM request_traces WHERE request_id='r9999'").fetchone()
    assert row[:4] == (1, 1, "small:1", '["app:x"]')
    assert '"HTTP 500"' in row[4]
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_retention_prunes_old_rows(tmp_path):
    store = TraceStore(tmp_path / "latency.db", retention_days=1)
    await store.open()
    store.submit(trace(1, timestamp=time.time() - 3 * 86400))
    store.submit(trace(2))
    await store.flush()
    assert await store.prune() == 1
    await store.close()
    db = sqlite3.connect(tmp_path / "latency.db")
    assert db.execute("SELECT request_id FROM request_traces").fetchall() == [("r2",)]


async def test_full_queue_drops_and_counts_instead_of_blocking(tmp_path):
    store = TraceStore(tmp_path / "latency.db", queue_size=3)
    # not opened: nothing drains the queue
    for i in range(5):
        store.submit(trace(i))
    assert store.dropped == 2 and store.queue.qsize() == 3


async def test_latency_history_survives_a_restart(herd_router, tmp_path):
    env = {"FLEET_DATA_DIR": str(tmp_path / "data")}
    router = await herd_router(plugins="backend-ollama", env=env)
    for i in range(10):
        router.services.record(trace(i, latency_ms=100.0 + i))
    await router.services.store.flush()
    await router.runner.cleanup()
    again = await herd_router(plugins="backend-ollama", env=env)
    assert again.services.latency.samples("n", "m:1") == 10
    assert again.services.latency.p75_ms("n", "m:1") == 107.0


@pytest.fixture
async def node():
    sim = SimNode(attrs.evolve(PROFILES["large"], num_parallel=64), time_scale=0)
    await sim.start()
    yield sim
    await sim.stop()


async def test_a_thousand_concurrent_requests_lose_no_trace_row(herd_router, herd_agent, node, tmp_path):
    router = await herd_router(plugins="backend-ollama",
                               env={"FLEET_DATA_DIR": str(tmp_path / "d")})
    await herd_agent(router.url, node.url, "big")
    model = "llama3.2:3b"  # loaded on the large profile
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as http:
        async def one(i):
            body = {"model": model, "prompt": f"hi {i}", "stream": i % 2 == 0,
                    "options": {"num_predict": 2}}
            async with http.post(f"{router.url}/api/generate", json=body,
                                 headers={"X-Request-Id": f"req-{i}"}) as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(one(i) for i in range(1000)))
    assert statuses == [200] * 1000
    await router.services.store.flush()
    db = sqlite3.connect(tmp_path / "d" / "latency.db")
    ids = {r[0] for r in db.execute("SELECT request_id FROM request_traces")}
    assert ids == {f"req-{i}" for i in range(1000)}
    slowest = db.execute("SELECT request_id, model, node_id, latency_ms FROM request_traces "
                         "ORDER BY latency_ms DESC LIMIT 10").fetchall()
    assert len(slowest) == 10 and all(row[2] == "big" for row in slowest)


async def test_failed_requests_are_found_by_the_failed_query(herd_router, herd_agent, node, tmp_path):
    router = await herd_router(plugins="backend-ollama",
                               env={"FLEET_DATA_DIR": str(tmp_path / "d")})
    await herd_agent(router.url, node.url, "big")
    model = "llama3.2:3b"  # loaded on the large profile
    node.set_fault(Fault(kind="http500"))
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/api/chat", json={"model": model, "messages": []}) as r:
            assert r.status == 502
    await router.services.store.flush()
    db = sqlite3.connect(tmp_path / "d" / "latency.db")
    rows = db.execute("SELECT request_id, model, status, error_message FROM request_traces "
                      "WHERE status='failed' ORDER BY timestamp DESC LIMIT 20").fetchall()
    assert len(rows) == 1 and rows[0][2] == "failed" and "HTTP 500" in rows[0][3]


async def test_an_older_database_gains_new_columns(tmp_path):
    path = tmp_path / "latency.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE request_traces (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT "
                "NOT NULL, timestamp REAL NOT NULL, model TEXT NOT NULL, original_model TEXT NOT NULL,"
                " node_id TEXT, status TEXT NOT NULL, http_status INTEGER, api TEXT, path TEXT, "
                "stream INTEGER, latency_ms REAL, ttft_ms REAL, prompt_tokens INTEGER, "
                "completion_tokens INTEGER, retries INTEGER NOT NULL DEFAULT 0, fallback_model TEXT,"
                " score REAL, score_breakdown TEXT, attempts TEXT, tags TEXT, error_message TEXT)")
    old.commit()
    old.close()
    store = TraceStore(path)
    await store.open()
    store.submit(trace(1, details={"budget": 1024}))
    await store.flush()
    await store.close()
    assert sqlite3.connect(path).execute("SELECT details FROM request_traces").fetchone() == (
        '{"budget": 1024}',)
