"""Roll-ups: what the writer's SQL stores equals what the raw rows add up to, in every batch, after
a refused row, after a migration, and under retention; percentiles read from the histogram."""

import random
import sqlite3
import time

import pytest
import structlog
from herd_analytics import rollups
from herd_analytics.rollups import DAY, HOUR, LATENCY_BOUNDS_MS, percentile, percentiles
from herd_analytics.store import SCHEMA, TraceStore

from herd_kernel.models import Trace


def served(request_id: str, **kw) -> Trace:
    """A completed request on node ``n`` for model ``m``, now, unless ``kw`` says otherwise."""
    base = dict(timestamp=time.time(), model="m", api="ollama", path="/api/chat", node_id="n",
                status="completed", http_status=200, latency_ms=1.0)
    return Trace(request_id=request_id, **{**base, **kw})


FLOATS = {"latency_sum", "ttft_sum", "gen_ms", "latency_min", "latency_max", "first_ts", "last_ts"}


def assert_same(stored, expected):
    assert stored.keys() == expected.keys()
    for key, row in expected.items():
        for name, value in row.items():
            if name in FLOATS and value is not None:
                assert stored[key][name] == pytest.approx(value, rel=1e-9), (key, name)
            else:
                assert stored[key][name] == value, (key, name)


@pytest.mark.parametrize("grain", [HOUR, DAY], ids=["hourly", "daily"])
async def test_rollups_equal_the_aggregates_of_the_raw_rows(tmp_path, history, raw_rollups,
                                                            saved_rollups, grain):
    path = tmp_path / "latency.db"
    traces = await history(path, 3000, days=10)
    expected = raw_rollups(path, grain)
    assert_same(saved_rollups(path, grain), expected)
    # every trace once in the rows of all traffic, once more per distinct tag
    everything = [row for key, row in expected.items() if key[0] == ""]
    assert sum(row["requests"] for row in everything) == len(traces)
    tagged = sum(len(set(t.tags)) for t in traces)
    assert sum(row["requests"] for key, row in expected.items() if key[0]) == tagged
    assert {key[0] for key in expected} == {"", "aider", "team-a", "batch"}
    assert all(key[2:] == ("", "") for key in expected if key[0])


async def test_a_refused_row_is_in_neither_the_table_nor_the_rollups(tmp_path, raw_rollups,
                                                                     saved_rollups):
    path = tmp_path / "latency.db"
    store = TraceStore(path)
    await store.open()
    await store.db.execute("CREATE TRIGGER refuse BEFORE INSERT ON request_traces "
                           "WHEN NEW.request_id = 'r5' BEGIN SELECT RAISE(ABORT, 'no'); END")
    await store.db.commit()
    for i in range(10):
        store.submit(served(f"r{i}", latency_ms=100.0 + i, tags=("a",)))
    await store.flush()
    await store.close()
    [(requests,)] = sqlite3.connect(path).execute(
        "SELECT requests FROM rollup_daily WHERE tag = ''").fetchall()
    assert requests == 9
    for grain in (HOUR, DAY):
        assert_same(saved_rollups(path, grain), raw_rollups(path, grain))


async def test_when_the_rollups_fail_the_traces_are_still_written(tmp_path):
    path = tmp_path / "latency.db"
    store = TraceStore(path)
    await store.open()
    await store.db.execute("CREATE TRIGGER refuse BEFORE INSERT ON rollup_daily "
                           "BEGIN SELECT RAISE(ABORT, 'full'); END")
    await store.db.commit()
    with structlog.testing.capture_logs() as logs:
        for i in range(5):
            store.submit(served(f"r{i}"))
        await store.flush()
    await store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM request_traces").fetchone() == (5,)
    # all or nothing: the hourly roll-ups of that batch went with the daily ones
    assert db.execute("SELECT count(*) FROM rollup_hourly").fetchone() == (0,)
    assert (store.written, store.failed) == (5, 0)
    assert [e["log_level"] for e in logs if e["event"] == "trace roll-ups not updated for a batch"
            ] == ["error"]


async def test_raw_traces_go_after_their_retention_and_rollups_after_theirs(tmp_path):
    path = tmp_path / "latency.db"
    store = TraceStore(path, retention_days=30, rollup_retention_days=400)
    await store.open()
    now = time.time()
    for age_days in (1, 40, 300, 500):
        store.submit(served(f"r{age_days}", timestamp=now - age_days * DAY))
    await store.flush()
    assert await store.prune() == 3  # the raw rows older than 30 days
    await store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT request_id FROM request_traces").fetchall() == [("r1",)]
    # a daily bucket starts at its day's midnight, so a trace d days old lies in one that
    # began between d and d + 1 days ago, whatever the time of day now
    days = sorted(int((now - b) // DAY) for (b,) in db.execute(
        "SELECT bucket FROM rollup_daily WHERE tag = ''"))
    assert days == [1, 40, 300]  # 500 days old: past the roll-ups' 400
    assert db.execute("SELECT count(*) FROM rollup_hourly").fetchone() == (3,)


async def test_zero_retention_keeps_everything(tmp_path):
    store = TraceStore(tmp_path / "latency.db", retention_days=0, rollup_retention_days=0)
    await store.open()
    store.submit(served("old", timestamp=time.time() - 3000 * DAY))
    await store.flush()
    assert await store.prune() == 0
    await store.close()
    db = sqlite3.connect(tmp_path / "latency.db")
    assert db.execute("SELECT count(*) FROM rollup_daily").fetchone() == (1,)


OLD_SCHEMA = SCHEMA.replace("    details TEXT,\n", "")  # a database from before details too


@pytest.mark.parametrize("grain", [HOUR, DAY], ids=["hourly", "daily"])
async def test_an_old_database_gets_its_rollups_built_once(tmp_path, history, raw_rollups,
                                                           saved_rollups, grain):
    # an old database: rows written before roll-ups existed (the traces of a history, copied)
    source = tmp_path / "source.db"
    await history(source, 1500, days=20)
    path = tmp_path / "latency.db"
    old = sqlite3.connect(path)
    old.executescript(OLD_SCHEMA)
    old.execute(f"ATTACH '{source}' AS src")
    columns = ("request_id, timestamp, model, original_model, node_id, status, http_status, api, "
               "path, stream, latency_ms, ttft_ms, prompt_tokens, completion_tokens, retries, "
               "fallback_model, score, score_breakdown, attempts, tags, error_message")
    old.execute(f"INSERT INTO request_traces ({columns}) SELECT {columns} "
                "FROM src.request_traces")
    old.commit()
    old.execute("DETACH src")
    assert old.execute("PRAGMA user_version").fetchone() == (0,)
    assert "rollup_daily" not in {r[0] for r in old.execute("SELECT name FROM sqlite_master")}
    old.close()

    with structlog.testing.capture_logs() as logs:
        store = TraceStore(path, retention_days=0)
        await store.open()
        await store.close()
    assert [e["rows"] for e in logs if e["event"].startswith("trace roll-ups built")] == [1500]
    expected = raw_rollups(path, grain)
    assert_same(saved_rollups(path, grain), expected)
    assert sum(r["requests"] for k, r in expected.items() if k[0] == "") == 1500

    # built once: a row slipped in behind the store's back is not rolled up at the next start
    db = sqlite3.connect(path)
    db.execute("INSERT INTO request_traces (request_id, timestamp, model, original_model, status)"
               " VALUES ('sneaked', ?, 'm', 'm', 'completed')", (time.time(),))
    db.commit()
    db.close()
    store = TraceStore(path, retention_days=0)
    await store.open()
    await store.close()
    assert sum(r["requests"] for k, r in saved_rollups(path, grain).items() if k[0] == "") == 1500
    assert sum(r["requests"] for k, r in raw_rollups(path, grain).items() if k[0] == "") == 1501


async def test_rollups_of_traces_with_values_sqlite_cannot_sum_or_bucket(tmp_path):
    """Token counts near the int64 limit would overflow ``sum()``; a timestamp far in the
    future has no integer bucket. Neither may cost the batch its roll-ups or its rows."""
    path = tmp_path / "latency.db"
    store = TraceStore(path, retention_days=0)
    await store.open()
    store.submit(served("a", prompt_tokens=2**63 - 1))
    store.submit(served("b", prompt_tokens=2**63 - 1))
    store.submit(served("far", timestamp=1e300))
    store.submit(served("c"))
    await store.flush()
    await store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM request_traces").fetchone() == (4,)
    [(requests, prompt)] = db.execute(
        "SELECT requests, prompt_tokens FROM rollup_daily WHERE tag = ''").fetchall()
    assert requests == 3  # the far-future trace has no bucket
    assert prompt >= 2**62  # clamped, not an error


# --- percentiles from the histogram -------------------------------------------------------------


def histogram(values):
    counts = [0] * len(rollups.HISTOGRAM)
    for value in values:
        counts[rollups.latency_bucket(value)] += 1
    return counts


def exact(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def bucket_width(value):
    i = rollups.latency_bucket(value)
    lower = LATENCY_BOUNDS_MS[i - 1] if i else 0.0
    upper = LATENCY_BOUNDS_MS[i] if i < len(LATENCY_BOUNDS_MS) else value
    return upper - lower


def test_one_latency_is_every_percentile():
    counts = histogram([730.0])
    assert percentiles(counts, (0.5, 0.95, 0.99), 730.0, 730.0) == [730.0, 730.0, 730.0]


def test_an_empty_histogram_has_no_percentile():
    assert percentile([0] * len(rollups.HISTOGRAM), 0.5) is None


@pytest.mark.parametrize("seed", range(5))
def test_percentiles_fall_within_a_bucket_of_the_exact_value(seed):
    rng = random.Random(seed)
    values = [rng.lognormvariate(7, 1.3) for _ in range(rng.randint(50, 5000))]
    counts = histogram(values)
    got = percentiles(counts, (0.5, 0.95, 0.99), min(values), max(values))
    for q, estimate in zip((0.5, 0.95, 0.99), got, strict=True):
        truth = exact(values, q)
        # the estimate lies in the truth's bucket or, when the rank sits on a boundary, the next
        assert abs(estimate - truth) <= 1.5 * bucket_width(truth), (q, estimate, truth)
    assert got == sorted(got)


def test_latencies_beyond_the_last_bound_are_bounded_by_the_largest_seen():
    values = [600_000.0, 900_000.0]  # ten and fifteen minutes
    assert percentile(histogram(values), 0.99, min(values), max(values)) <= 900_000.0
    assert percentile(histogram(values), 0.5, min(values), max(values)) >= 600_000.0


def test_the_sql_buckets_latencies_as_python_does():
    db = sqlite3.connect(":memory:")
    sql = rollups._latency_bucket_sql()
    for value in (0.0, 9.99, 10.0, 14.1, 14.2, 999.0, 463409.4, 463409.5, 1e9, -5.0):
        [(bucket,)] = db.execute(f"SELECT {sql} FROM (SELECT ? AS latency_ms)", (value,))
        assert bucket == rollups.latency_bucket(value), value



# --- start-up: the latency history read back ----------------------------------------------------


async def test_recent_latencies_are_the_newest_completed_per_node_and_model(tmp_path):
    store = TraceStore(tmp_path / "latency.db")
    await store.open()
    now = time.time()

    def add(i, node, model, status="completed", age=0.0):
        store.submit(served(f"r{i}", timestamp=now - 1000 + i - age, model=model, node_id=node,
                            status=status, latency_ms=float(i)))

    for i in range(300):
        add(i, "a", "llama3.2")  # one name, normalized to llama3.2:latest
    for i in range(300, 303):
        add(i, "b", "qwen3:8b")
    add(303, "b", "qwen3:8b", status="failed")
    add(304, None, "qwen3:8b", status="rejected")
    add(305, "c", "old:1b", age=40 * DAY)  # a node not seen for 40 days
    await store.flush()
    rows = await store.recent_latencies(256)
    await store.close()
    assert [r for r in rows if r[0] == "a"] == [("a", "llama3.2:latest", float(i))
                                               for i in range(44, 300)]
    assert [r for r in rows if r[0] == "b"] == [("b", "qwen3:8b", float(i))
                                               for i in range(300, 303)]
    assert rows[0] == ("c", "old:1b", 305.0)  # oldest first
    assert len(rows) == 256 + 3 + 1
