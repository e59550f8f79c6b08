"""Fixtures of the analytics tests: traces, a generated history written through the real store,
and the roll-ups worked out again in Python from a database's raw rows (the oracle the SQL is
checked against)."""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from herd_analytics import rollups
from herd_analytics.store import TraceStore

from herd_kernel.models import Attempt, Trace

NODES = ("studio", "mini", None)
MODELS = ("llama3.2:3b", "qwen3:8b", "llama3.3:70b")
TAGS = ((), ("aider",), ("aider", "team-a"), ("batch", "batch"), ("team-a",))
STATUSES = ("completed",) * 8 + ("failed", "client_disconnected", "rejected", "reaped")


def random_trace(rng: random.Random, i: int, timestamp: float) -> Trace:
    """A trace of every kind the store sees: each status, no node, no time to first token, no
    token counts, retries, fallbacks, tags (one repeated)."""
    status = rng.choice(STATUSES)
    model = rng.choice(MODELS)
    fallback = rng.random() < 0.1
    node = rng.choice(NODES) if status != "rejected" else None
    retries = rng.choice((0, 0, 0, 1, 2))
    return Trace(
        request_id=f"h{i}", timestamp=timestamp, model="llama3.2:3b" if fallback else model,
        original_model=model, api="ollama", path="/api/chat", node_id=node, status=status,
        http_status=200 if status == "completed" else 502,
        latency_ms=rng.lognormvariate(6.5, 1.2),
        ttft_ms=rng.choice((None, rng.uniform(5, 400))),
        prompt_tokens=rng.choice((None, rng.randint(1, 4000))),
        completion_tokens=rng.choice((None, rng.randint(0, 900))),
        retries=retries,
        attempts=tuple(Attempt(node_id=f"x{k}", outcome="HTTP 500", status=500)
                       for k in range(retries)),
        tags=rng.choice(TAGS), error_message=None if status == "completed" else "boom")


async def write_history(path: Path, count: int, days: float, *, seed: int = 7,
                        now: float | None = None, **store_kw: Any) -> list[Trace]:
    """``count`` random traces spread over the last ``days``, written through the store's
    writer in several batches; the traces."""
    rng = random.Random(seed)
    now = time.time() if now is None else now
    traces = [random_trace(rng, i, now - rng.uniform(0, days * 86400)) for i in range(count)]
    store = TraceStore(path, **{"retention_days": 0, "rollup_retention_days": 0, **store_kw})
    await store.open()
    for i in range(0, count, 700):  # more than one batch, of uneven sizes
        for trace in traces[i:i + 700]:
            store.submit(trace)
        await store.flush()
    await store.close()
    return traces


@pytest.fixture
def history() -> Callable[..., Any]:
    return write_history


def rollups_from_raw(path: Path, grain: int) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The roll-up rows of ``grain`` that ``path``'s raw traces make, worked out in Python:
    what the writer's SQL must have stored."""
    db = sqlite3.connect(path)
    rows = db.execute("SELECT timestamp, node_id, model, status, latency_ms, ttft_ms, "
                      "prompt_tokens, completion_tokens, retries, fallback_model, tags "
                      "FROM request_traces").fetchall()
    db.close()
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    known = ("completed", "failed", "rejected", "client_disconnected")
    for (ts, node, model, status, latency, ttft, prompt, completion, retries, fallback,
         tags) in rows:
        bucket = int(ts // grain * grain)
        try:
            parsed = json.loads(tags) if tags else []
        except ValueError:
            parsed = []
        tag_set = {t for t in parsed if isinstance(t, str) and t} if isinstance(parsed, list) \
            else set()
        keys = [("", bucket, node or "", model)] + [(t, bucket, "", "") for t in tag_set]
        done = status == "completed" and latency is not None
        for key in keys:
            row = out.setdefault(key, {name: 0 for name in rollups.SUMS} | {
                "latency_min": None, "latency_max": None, "first_ts": None, "last_ts": None})
            row["requests"] += 1
            row["completed"] += status == "completed"
            row["failed"] += status == "failed"
            row["rejected"] += status == "rejected"
            row["disconnected"] += status == "client_disconnected"
            row["other"] += status not in known
            row["retried"] += retries > 0
            row["retries"] += retries
            row["fallbacks"] += fallback is not None
            row["prompt_tokens"] += prompt or 0
            row["completion_tokens"] += completion or 0
            if done:
                row["latency_count"] += 1
                row["latency_sum"] += latency
                row[rollups.HISTOGRAM[rollups.latency_bucket(latency)]] += 1
                row["latency_min"] = latency if row["latency_min"] is None else min(
                    row["latency_min"], latency)
                row["latency_max"] = latency if row["latency_max"] is None else max(
                    row["latency_max"], latency)
                if completion is not None:
                    row["gen_tokens"] += completion
                    row["gen_ms"] += max(latency - (ttft or 0), 0)
            if status == "completed" and ttft is not None:
                row["ttft_count"] += 1
                row["ttft_sum"] += ttft
            row["first_ts"] = ts if row["first_ts"] is None else min(row["first_ts"], ts)
            row["last_ts"] = ts if row["last_ts"] is None else max(row["last_ts"], ts)
    return out


def stored_rollups(path: Path, grain: int) -> dict[tuple[Any, ...], dict[str, Any]]:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    rows = db.execute(f"SELECT * FROM {rollups.TABLES[grain]}").fetchall()
    db.close()
    return {(r["tag"], r["bucket"], r["node_id"], r["model"]):
            {name: r[name] for name in rollups.COLUMNS} for r in rows}


@pytest.fixture
def raw_rollups() -> Callable[..., Any]:
    return rollups_from_raw


@pytest.fixture
def saved_rollups() -> Callable[..., Any]:
    return stored_rollups
