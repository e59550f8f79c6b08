"""The trace store: ``<data dir>/latency.db`` (SQLite, WAL), written by one task from a bounded
queue in batches, so a request never waits for the database. Old rows are pruned by retention.

The ``request_traces`` columns keep the names the reference's users already query
(``SELECT request_id, model, status, error_message FROM request_traces WHERE status='failed'``);
the reference's alternative names exist as generated columns.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from herd_kernel.models import Trace, normalize_model

log = structlog.get_logger("herd.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS request_traces (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    timestamp REAL NOT NULL,
    model TEXT NOT NULL,
    original_model TEXT NOT NULL,
    node_id TEXT,
    status TEXT NOT NULL,
    http_status INTEGER,
    api TEXT,
    path TEXT,
    stream INTEGER,
    latency_ms REAL,
    ttft_ms REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    retries INTEGER NOT NULL DEFAULT 0,
    fallback_model TEXT,
    score REAL,
    score_breakdown TEXT,
    attempts TEXT,
    tags TEXT,
    error_message TEXT,
    details TEXT,
    time_to_first_token_ms REAL GENERATED ALWAYS AS (ttft_ms) VIRTUAL,
    retry_count INTEGER GENERATED ALWAYS AS (retries) VIRTUAL,
    fallback_used INTEGER GENERATED ALWAYS AS (fallback_model IS NOT NULL) VIRTUAL,
    scores_breakdown TEXT GENERATED ALWAYS AS (score_breakdown) VIRTUAL
);
CREATE INDEX IF NOT EXISTS request_traces_timestamp ON request_traces (timestamp);
CREATE INDEX IF NOT EXISTS request_traces_request_id ON request_traces (request_id);
CREATE INDEX IF NOT EXISTS request_traces_node_model ON request_traces (node_id, model, timestamp);
CREATE INDEX IF NOT EXISTS request_traces_status ON request_traces (status, timestamp);
"""

_INSERT = """
INSERT INTO request_traces (request_id, timestamp, model, original_model, node_id, status,
    http_status, api, path, stream, latency_ms, ttft_ms, prompt_tokens, completion_tokens, retries,
    fallback_model, score, score_breakdown, attempts, tags, error_message, details)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

BATCH = 500
_STOP = object()


def _text(value: str | None) -> str | None:
    """A string SQLite can store: a lone surrogate (from a ``\\ud800`` escape in a client's JSON)
    is kept as its escape, so one such row never costs its whole batch."""
    if value is None or value.isascii():
        return value
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def trace_row(trace: Trace) -> tuple[Any, ...]:
    fallback = trace.model if trace.original_model and trace.model != trace.original_model else None
    return (
        _text(trace.request_id),
        trace.timestamp,
        _text(trace.model),
        _text(trace.original_model or trace.model),
        _text(trace.node_id),
        trace.status,
        trace.http_status,
        trace.api,
        trace.path,
        int(trace.stream),
        trace.latency_ms,
        trace.ttft_ms,
        trace.prompt_tokens,
        trace.completion_tokens,
        trace.retries,
        _text(fallback),
        trace.score,
        json.dumps(trace.score_breakdown),
        json.dumps([{"node_id": a.node_id, "outcome": a.outcome, "status": a.status}
                    for a in trace.attempts]),
        json.dumps(list(trace.tags)),
        _text(trace.error_message),
        json.dumps(trace.details) if trace.details else None,
    )


class TraceStore:
    """One connection, one writer task. ``submit`` never blocks; a full queue drops and counts."""

    def __init__(self, path: Path, *, queue_size: int = 10_000, retention_days: float = 30.0) -> None:
        self.path = Path(path)
        self.retention_days = retention_days
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=queue_size)
        self.db: aiosqlite.Connection | None = None
        self.written = 0
        self.dropped = 0
        self._writer: asyncio.Task[None] | None = None
        self._last_prune = 0.0

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = await aiosqlite.connect(self.path)
        await self.db.execute("PRAGMA journal_mode=WAL")
        await self.db.execute("PRAGMA synchronous=NORMAL")
        await self.db.execute("PRAGMA busy_timeout=5000")
        await self.db.executescript(SCHEMA)
        await self._migrate()
        await self.db.commit()
        await self.prune()
        self._writer = asyncio.create_task(self._write_loop(), name="herd-trace-writer")

    async def _migrate(self) -> None:
        """Columns added after a database was created (CREATE TABLE IF NOT EXISTS keeps old ones)."""
        assert self.db is not None
        async with self.db.execute("PRAGMA table_info(request_traces)") as cursor:
            have = {row[1] for row in await cursor.fetchall()}
        for column, kind in (("details", "TEXT"),):
            if column not in have:
                await self.db.execute(f"ALTER TABLE request_traces ADD COLUMN {column} {kind}")

    async def close(self) -> None:
        """Write what is queued, then close (an unclosed aiosqlite thread hangs interpreter exit)."""
        if self._writer is not None:
            await self.queue.put(_STOP)
            await self._writer
            self._writer = None
        if self.db is not None:
            await self.db.close()
            self.db = None

    def submit(self, trace: Trace) -> None:
        try:
            self.queue.put_nowait(trace)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("trace queue full; traces dropped", dropped=self.dropped)

    async def flush(self) -> None:
        """Wait until everything submitted so far is in the database (tests, shutdown)."""
        await self.queue.join()

    async def _write_loop(self) -> None:
        assert self.db is not None
        while True:
            first = await self.queue.get()
            batch = [first]
            while len(batch) < BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            stop = any(item is _STOP for item in batch)
            rows = [trace_row(t) for t in batch if t is not _STOP]
            try:
                if rows:
                    await self.db.executemany(_INSERT, rows)
                    await self.db.commit()
                    self.written += len(rows)
                if time.time() - self._last_prune > 3600:
                    await self.prune()
            except Exception as exc:  # noqa: BLE001 - a disk problem must not stop the router
                log.error("trace write failed", error=repr(exc), rows=len(rows))
            finally:
                for _ in batch:
                    self.queue.task_done()
            if stop:
                return

    async def prune(self) -> int:
        assert self.db is not None
        self._last_prune = time.time()
        if self.retention_days <= 0:
            return 0
        cutoff = time.time() - self.retention_days * 86400
        cursor = await self.db.execute("DELETE FROM request_traces WHERE timestamp < ?", (cutoff,))
        await self.db.commit()
        return cursor.rowcount or 0

    async def recent_latencies(self, per_key: int) -> list[tuple[str, str, float]]:
        """The newest ``per_key`` completed latencies per node:model, oldest first, for restoring
        the in-memory history at start-up."""
        assert self.db is not None
        query = """
            SELECT node_id, model, latency_ms FROM (
                SELECT node_id, model, latency_ms, timestamp,
                       ROW_NUMBER() OVER (PARTITION BY node_id, model ORDER BY timestamp DESC) AS n
                FROM request_traces
                WHERE status = 'completed' AND node_id IS NOT NULL AND latency_ms IS NOT NULL
            ) WHERE n <= ? ORDER BY timestamp
        """
        async with self.db.execute(query, (per_key,)) as cursor:
            rows = await cursor.fetchall()
        return [(node, normalize_model(model), float(latency)) for node, model, latency in rows]
