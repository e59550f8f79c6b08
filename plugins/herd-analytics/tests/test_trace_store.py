"""The trace store: real SQLite files, the queries users run against them, no lost rows."""

import asyncio
import json
import math
import sqlite3
import time

import aiohttp
import attrs
import pytest
import structlog
from herd_analytics import store_of
from herd_analytics.store import SCHEMA, TraceStore, trace_row
from herd_sim import PROFILES, Fault, SimNode

from herd_kernel.models import Attempt, Trace


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
    router = await herd_router(plugins="backend-ollama,analytics", env=env)
    for i in range(10):
        router.services.record(trace(i, latency_ms=100.0 + i))
    await store_of(router.services).flush()
    await router.runner.cleanup()
    again = await herd_router(plugins="backend-ollama,analytics", env=env)
    assert again.services.latency.samples("n", "m:1") == 10
    assert again.services.latency.p75_ms("n", "m:1") == 107.0


@pytest.fixture
async def node():
    sim = SimNode(attrs.evolve(PROFILES["large"], num_parallel=64), time_scale=0)
    await sim.start()
    yield sim
    await sim.stop()


async def test_a_thousand_concurrent_requests_lose_no_trace_row(herd_router, herd_agent, node, tmp_path):
    router = await herd_router(plugins="backend-ollama,analytics",
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
    await store_of(router.services).flush()
    db = sqlite3.connect(tmp_path / "d" / "latency.db")
    ids = {r[0] for r in db.execute("SELECT request_id FROM request_traces")}
    assert ids == {f"req-{i}" for i in range(1000)}
    slowest = db.execute("SELECT request_id, model, node_id, latency_ms FROM request_traces "
                         "ORDER BY latency_ms DESC LIMIT 10").fetchall()
    assert len(slowest) == 10 and all(row[2] == "big" for row in slowest)


async def test_failed_requests_are_found_by_the_failed_query(herd_router, herd_agent, node, tmp_path):
    router = await herd_router(plugins="backend-ollama,analytics",
                               env={"FLEET_DATA_DIR": str(tmp_path / "d")})
    await herd_agent(router.url, node.url, "big")
    model = "llama3.2:3b"  # loaded on the large profile
    node.set_fault(Fault(kind="http500"))
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/api/chat", json={"model": model, "messages": []}) as r:
            assert r.status == 502
    await store_of(router.services).flush()
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


# --- poisoned traces: values a client or a node can put in a trace ------------------------------


class Unprintable:
    def __str__(self):
        raise RuntimeError("no")


def poisoned(i, **kw):
    """A trace carrying every value that once failed a batch insert."""
    cycle: list = []
    cycle.append(cycle)
    deep: list = [1]
    for _ in range(100):
        deep = [deep]
    return trace(
        i,
        request_id=f"r{i}-\udcff\udcfe",  # a non-UTF-8 X-Request-Id, as aiohttp decodes it
        model="\udc80",  # JSON "\\udc80"
        original_model="big\ud800:1",
        node_id=b"n\xff",
        error_message="node said \udcc3",
        http_status=True,
        prompt_tokens="12",
        completion_tokens=10**5000,
        retries=1.5,
        latency_ms=float("nan"),
        ttft_ms=float("inf"),
        score=10**400,
        score_breakdown={"thermal": float("nan"), "load": 1e400, "ok": 0.5},
        attempts=(Attempt(node_id="n\udc80", outcome="HTTP \ud83d", status=500),),
        tags=("app:\udce9",),
        details={"cycle": cycle, (1, 2): {3}, "raw": b"\xff", "big": 10**5000,
                 "odd": Unprintable(), "deep": deep},
        **kw,
    )


def assert_storable(row):
    for value in row:
        if isinstance(value, str):
            value.encode("utf-8")  # raises on a lone surrogate
        elif isinstance(value, int):
            assert -(2**63) <= value < 2**63
        elif isinstance(value, float):
            assert math.isfinite(value)
        else:
            assert value is None


def strict_json(text):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_trace_row_makes_every_value_storable():
    row = trace_row(poisoned(1))
    assert_storable(row)
    (request_id, _, model, original, node_id, _, http_status, _, _, _, latency, ttft,
     prompt, completion, retries, fallback, score, breakdown, attempts, tags, error,
     details) = row
    assert (request_id, model, original, node_id) == ("r1-\ufffd\ufffd", "\ufffd", "big\ufffd:1",
                                                      "n\ufffd")
    assert fallback == "\ufffd" and error == "node said \ufffd"
    assert (http_status, prompt, completion, retries) == (None, None, None, 0)
    assert (latency, ttft, score) == (None, None, None)
    assert strict_json(breakdown) == {"thermal": None, "load": None, "ok": 0.5}
    assert strict_json(attempts) == [{"node_id": "n\ufffd", "outcome": "HTTP \ufffd", "status": 500}]
    assert strict_json(tags) == ["app:\ufffd"]
    plain = strict_json(details)
    assert plain["raw"] == "\ufffd" and plain["big"] is None and plain["odd"] == "<Unprintable>"
    assert plain["(1, 2)"] == [3] and "cycle" in plain and "deep" in plain


@pytest.mark.parametrize("value,stored", [
    (12, 12), (12.0, 12), (0, 0), (2**63 - 1, 2**63 - 1), (-(2**63), -(2**63)),
    ("12", None), (1.5, None), (float("inf"), None), (float("nan"), None), (True, None),
    ([1], None), ({"a": 1}, None), (10**5000, None), (2**63, None), (None, None),
], ids=lambda v: f"{type(v).__name__}:{v!r:.20}" if not isinstance(v, int) or v < 10**20 else "huge")
def test_token_counts_are_int64_or_null(value, stored):
    row = trace_row(trace(1, completion_tokens=value, prompt_tokens=value))
    assert row[12] == row[13] == stored
    assert type(row[13]) is (int if stored is not None else type(None))


def test_a_sanitised_row_is_accepted_by_sqlite():
    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA)
    from herd_analytics.store import _INSERT

    db.execute(_INSERT, trace_row(poisoned(1)))
    assert db.execute("SELECT count(*) FROM request_traces").fetchone() == (1,)


async def test_one_poisoned_row_among_31_good_ones_loses_nothing(tmp_path):
    store = TraceStore(tmp_path / "latency.db")
    await store.open()
    # submitted without yielding: the writer takes all 32 as one batch
    for i in range(32):
        store.submit(poisoned(i) if i == 15 else trace(i))
    await asyncio.wait_for(store.flush(), 30)  # a dead writer would leave flush waiting forever
    await store.close()
    db = sqlite3.connect(tmp_path / "latency.db")
    ids = sorted(r[0] for r in db.execute("SELECT request_id FROM request_traces"))
    assert ids == sorted([f"r{i}" for i in range(32) if i != 15] + ["r15-\ufffd\ufffd"])
    assert (store.written, store.failed) == (32, 0)


async def test_a_row_sqlite_still_refuses_costs_only_itself_and_is_logged(tmp_path):
    path = tmp_path / "latency.db"
    store = TraceStore(path)
    await store.open()
    # a failure no sanitising foresees (a constraint someone added to the table)
    await store.db.execute("CREATE TRIGGER refuse BEFORE INSERT ON request_traces "
                           "WHEN NEW.request_id = 'r15' BEGIN SELECT RAISE(ABORT, 'refused'); END")
    await store.db.commit()
    with structlog.testing.capture_logs() as logs:
        for i in range(32):
            store.submit(trace(i))
        await store.flush()
    await store.close()
    ids = [r[0] for r in sqlite3.connect(path).execute("SELECT request_id FROM request_traces")]
    # rows before the refused one are written once, not once by the batch and again alone
    assert sorted(ids) == sorted(f"r{i}" for i in range(32) if i != 15)
    assert (store.written, store.failed) == (31, 1)
    [failure] = [e for e in logs if e["event"] == "trace row not written"]
    assert failure["request_id"] == "r15"
    assert isinstance(failure["exc_info"], sqlite3.IntegrityError)  # its traceback goes in the log
    assert failure["log_level"] == "error"
