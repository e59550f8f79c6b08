"""The trace store: ``<data dir>/latency.db`` (SQLite, WAL), written by one task from a bounded
queue in batches, so a request never waits for the database. Each batch updates the hourly and
daily roll-ups (``rollups``) in the same transaction. Old rows are pruned by retention: raw
traces after ``retention_days``, roll-ups after ``rollup_retention_days``.

The ``request_traces`` columns keep the names the reference's users already query
(``SELECT request_id, model, status, error_message FROM request_traces WHERE status='failed'``);
the reference's alternative names exist as generated columns.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from herd_analytics import rollups
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
#: ``PRAGMA user_version`` of a database whose roll-ups are built (0: created before roll-ups)
ROLLUP_VERSION = 1


def trace_row(trace: Trace) -> tuple[Any, ...]:
    """The row for ``trace``, every value one SQLite takes: a trace carries text and numbers from
    clients and nodes (a header decoded with surrogateescape, a model name with a lone surrogate,
    a token count of ``"12"`` or ``1e400``), and one value SQLite refuses fails a whole batch."""
    model = _text(trace.model) or ""
    original = _text(trace.original_model) or model
    timestamp = _real(trace.timestamp)
    return (
        _text(trace.request_id) or "",
        time.time() if timestamp is None else timestamp,
        model,
        original,
        _text(trace.node_id),
        _text(trace.status) or "",
        _integer(trace.http_status),
        _text(trace.api),
        _text(trace.path),
        int(trace.stream is True),
        _real(trace.latency_ms),
        _real(trace.ttft_ms),
        _integer(trace.prompt_tokens),
        _integer(trace.completion_tokens),
        _integer(trace.retries) or 0,
        model if original != model else None,
        _real(trace.score),
        _json(trace.score_breakdown),
        _json([{"node_id": a.node_id, "outcome": a.outcome, "status": a.status}
               for a in trace.attempts]),
        _json(list(trace.tags)),
        _text(trace.error_message),
        _json(trace.details) if trace.details else None,
    )


# --- making values storable: never raises, never yields invalid UTF-8 -------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")
_INT64 = (-(1 << 63), (1 << 63) - 1)
_JSON_DEPTH = 32


def _text(value: Any) -> str | None:
    """Valid UTF-8 text: a lone surrogate becomes U+FFFD, bytes are decoded with replacement."""
    if value is None:
        return None
    if isinstance(value, str):
        return value if value.isascii() else _SURROGATE.sub("\ufffd", value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return _text(_describe(value))


def _describe(value: Any) -> str:
    """``str(value)`` that cannot raise (a 5,000-digit int or a broken ``__str__`` do)."""
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - any object may come through a plugin's details
        return f"<{type(value).__name__}>"


def _integer(value: Any) -> int | None:
    """An integral number in SQLite's int64 range, else None (``True``, ``"12"``, ``1.5``, 2**63)."""
    if isinstance(value, float) and value.is_integer():  # inf and nan are not
        value = int(value)
    if type(value) is int and _INT64[0] <= value <= _INT64[1]:
        return value
    return None


def _real(value: Any) -> float | None:
    """A finite float, else None (SQLite stores inf, and NaN as NULL, but JSON readers choke)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond a double
        return None
    return number if math.isfinite(number) else None


def _json(value: Any) -> str:
    """JSON text for a TEXT column; whatever ``value`` holds, this returns valid JSON."""
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError):  # NaN, a cycle, a tuple key, a huge int
        text = _ENCODER.encode(_plain(value, _JSON_DEPTH))
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (set, frozenset)):
        return list(value)
    return _describe(value)


_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, default=_json_default)


def _plain(value: Any, depth: int) -> Any:
    """``value`` as JSON-safe data: finite floats, int64 ints, string keys, bounded depth."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return _integer(value)
    if isinstance(value, float):
        return _real(value)
    if depth <= 0:
        return None
    if isinstance(value, dict):
        return {k if isinstance(k, str) else _describe(k): _plain(v, depth - 1)
                for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v, depth - 1) for v in value]
    return _plain(_json_default(value), depth - 1)


class TraceStore:
    """One connection, one writer task. ``submit`` never blocks; a full queue drops and counts."""

    def __init__(self, path: Path, *, queue_size: int = 10_000, retention_days: float = 30.0,
                 rollup_retention_days: float = 400.0) -> None:
        self.path = Path(path)
        self.retention_days = retention_days
        self.rollup_retention_days = rollup_retention_days
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=queue_size)
        self.db: aiosqlite.Connection | None = None
        self.written = 0
        self.dropped = 0
        self.failed = 0  # rows SQLite refused even alone (each logged)
        self._writer: asyncio.Task[None] | None = None
        self._last_prune = 0.0

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = await aiosqlite.connect(self.path)
        await self.db.execute("PRAGMA journal_mode=WAL")
        await self.db.execute("PRAGMA synchronous=NORMAL")
        await self.db.execute("PRAGMA busy_timeout=5000")
        await self.db.executescript(SCHEMA + rollups.schema())
        await self._migrate()
        await self.db.commit()
        await self.prune()
        self._writer = asyncio.create_task(self._write_loop(), name="herd-trace-writer")

    async def _migrate(self) -> None:
        """Columns added after a database was created (CREATE TABLE IF NOT EXISTS keeps old ones),
        and, once, the roll-ups of the rows a database held before it had roll-ups."""
        assert self.db is not None
        async with self.db.execute("PRAGMA table_info(request_traces)") as cursor:
            have = {row[1] for row in await cursor.fetchall()}
        for column, kind in (("details", "TEXT"),):
            if column not in have:
                await self.db.execute(f"ALTER TABLE request_traces ADD COLUMN {column} {kind}")
        async with self.db.execute("PRAGMA user_version") as cursor:
            [(version,)] = await cursor.fetchall()
        if version >= ROLLUP_VERSION:
            return
        started = time.monotonic()
        await self.db.execute("BEGIN IMMEDIATE")
        try:
            for table in rollups.TABLES.values():
                await self.db.execute(f"DELETE FROM {table}")
            async with self.db.execute("SELECT count(*) FROM request_traces") as cursor:
                [(rows,)] = await cursor.fetchall()
            if rows:
                await self._roll_up(after=0)
            await self.db.execute(f"PRAGMA user_version = {ROLLUP_VERSION}")
            await self.db.commit()
        except BaseException:
            await self.db.rollback()
            raise
        if rows:
            log.info("trace roll-ups built from the rows already stored", rows=rows,
                     seconds=round(time.monotonic() - started, 3))

    async def close(self) -> None:
        """Write what is queued, then close (an unclosed aiosqlite thread hangs interpreter exit)."""
        if self._writer is not None:
            await self.queue.put(_STOP)
            await self._writer
            self._writer = None
        if self.db is not None:
            await self.db.close()
            self.db = None

    def counters(self) -> dict[str, int]:
        """Rows written, dropped (queue full), failed (refused by SQLite) and waiting: the
        ``trace_store`` section of ``/fleet/status``."""
        return {"written": self.written, "dropped": self.dropped, "failed": self.failed,
                "queued": self.queue.qsize()}

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
            try:
                await self._write([t for t in batch if t is not _STOP])
                if time.time() - self._last_prune > 3600:
                    await self.prune()
            except Exception as exc:  # noqa: BLE001 - a disk problem must not stop the router
                log.error("trace write failed", error=repr(exc), rows=len(batch))
                await self._rollback()
            finally:
                for _ in batch:
                    self.queue.task_done()
            if stop:
                return

    async def _write(self, traces: list[Trace]) -> None:
        """One transaction per batch: one ``executemany``, then the roll-ups of the rows it
        added. If SQLite refuses the batch, it is rolled back and written row by row, so one bad
        row costs only itself (logged with its request id, counted in ``failed``)."""
        assert self.db is not None
        rows = []
        for trace in traces:
            try:
                rows.append((trace, trace_row(trace)))
            except Exception as exc:  # noqa: BLE001 - a trace we cannot even turn into a row
                self._row_failed(trace, exc)
        if not rows:
            return
        # the write lock first, so the ids after ``after`` are this batch's alone
        after = await self._begin()
        try:
            await self.db.executemany(_INSERT, [row for _, row in rows])
            written = len(rows)
        except Exception as exc:  # noqa: BLE001 - find the row SQLite refused
            log.warning("trace batch refused; writing it row by row", rows=len(rows),
                        error=repr(exc))
            await self.db.rollback()  # rows before the bad one are in the open transaction
            after = await self._begin()
            written = 0
            for trace, row in rows:
                try:
                    await self.db.execute(_INSERT, row)
                    written += 1
                except Exception as exc:  # noqa: BLE001
                    self._row_failed(trace, exc)
        await self.db.execute("SAVEPOINT rollups")
        try:
            await self._roll_up(after)
        except Exception as exc:  # noqa: BLE001 - the traces matter more than their roll-ups
            await self.db.execute("ROLLBACK TO rollups")
            log.error("trace roll-ups not updated for a batch", rows=written, error=repr(exc))
        await self.db.execute("RELEASE rollups")
        await self.db.commit()
        self.written += written

    async def _begin(self) -> int:
        """Open a write transaction; the largest row id before it."""
        assert self.db is not None
        await self.db.execute("BEGIN IMMEDIATE")
        async with self.db.execute("SELECT coalesce(max(id), 0) FROM request_traces") as cursor:
            [(last,)] = await cursor.fetchall()
        return int(last)

    async def _roll_up(self, after: int) -> None:
        """Add the rows with ``id > after`` to the hourly and daily roll-ups."""
        assert self.db is not None
        for grain in rollups.TABLES:
            await self.db.execute(rollups.rollup_sql(grain), {"after": after})

    async def _rollback(self) -> None:
        if self.db is not None and self.db.in_transaction:
            try:
                await self.db.rollback()
            except Exception as exc:  # noqa: BLE001
                log.error("trace write rollback failed", error=repr(exc))

    def _row_failed(self, trace: Any, exc: Exception) -> None:
        self.failed += 1
        # the exception itself, not exc_info=True: log records are formatted on another thread
        log.error("trace row not written", request_id=_text(getattr(trace, "request_id", None)),
                  failed=self.failed, exc_info=exc)

    async def prune(self) -> int:
        """Delete raw traces older than ``retention_days`` and roll-up rows whose whole bucket is
        older than ``rollup_retention_days`` (0: keep); the number of traces deleted."""
        assert self.db is not None
        now = self._last_prune = time.time()
        deleted = 0
        if self.retention_days > 0:
            cursor = await self.db.execute("DELETE FROM request_traces WHERE timestamp < ?",
                                           (now - self.retention_days * 86400,))
            deleted = cursor.rowcount or 0
        if self.rollup_retention_days > 0:
            cutoff = now - self.rollup_retention_days * 86400
            for grain, table in rollups.TABLES.items():
                await self.db.execute(f"DELETE FROM {table} WHERE bucket <= ?", (cutoff - grain,))
        await self.db.commit()
        return deleted

    async def recent_latencies(self, per_key: int) -> list[tuple[str, str, float]]:
        """The newest ``per_key`` completed latencies per node:model, oldest first, for restoring
        the in-memory history at start-up: one indexed read per node and model the roll-ups
        name, so a start costs the same on a year of traces as on a day."""
        assert self.db is not None
        async with self.db.execute("SELECT DISTINCT node_id, model FROM rollup_daily "
                                   "WHERE tag = '' AND node_id <> ''") as cursor:
            keys = await cursor.fetchall()
        found: list[tuple[float, str, str, float]] = []
        for node, model in keys:
            async with self.db.execute(
                "SELECT timestamp, latency_ms FROM request_traces WHERE node_id = ? AND model = ? "
                "AND status = 'completed' AND latency_ms IS NOT NULL "
                "ORDER BY timestamp DESC LIMIT ?", (node, model, per_key),
            ) as cursor:
                found += [(ts, node, normalize_model(model), float(latency))
                          for ts, latency in await cursor.fetchall()]
        found.sort()
        return [(node, model, latency) for _ts, node, model, latency in found]
