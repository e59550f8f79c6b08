"""The analytics queries, on a read-only connection of their own: SQLite in WAL mode lets it read
while the writer writes, and aiosqlite runs it on its own thread, so an API call never waits on
the writer and never blocks the event loop. Everything but ``traces`` reads the roll-ups.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from herd_analytics.rollups import DAY, HOUR, Span, aggregate_sql, describe, merge

_NODE_FIGURES = ("request_count", "completed_count", "failed_count", "avg_latency_ms",
                 "p50_latency_ms", "p95_latency_ms", "avg_ttft_ms", "tokens_per_s")
_TRACE_COLUMNS = ("request_id", "timestamp", "model", "original_model", "node_id", "status",
                  "http_status", "api", "path", "stream", "latency_ms", "ttft_ms",
                  "prompt_tokens", "completion_tokens", "retries", "fallback_model", "score",
                  "score_breakdown", "attempts", "tags", "error_message", "details")


def _json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _trace(raw: dict[str, Any]) -> dict[str, Any]:
    """A ``request_traces`` row as the traces API shows it (the reference's field names, and
    ours beside them)."""
    attempts = _json(raw["attempts"]) or []
    excluded = [a.get("node_id") for a in attempts
                if isinstance(a, dict) and a.get("outcome") != "ok"]
    tags = _json(raw["tags"])
    return {
        "request_id": raw["request_id"],
        "timestamp": raw["timestamp"],
        "model": raw["model"],
        "original_model": raw["original_model"],
        "node_id": raw["node_id"],
        "status": raw["status"],
        "http_status": raw["http_status"],
        "api": raw["api"],
        "original_format": raw["api"],
        "path": raw["path"],
        "stream": bool(raw["stream"]),
        "score": raw["score"],
        "scores_breakdown": _json(raw["score_breakdown"]),
        "latency_ms": raw["latency_ms"],
        "time_to_first_token_ms": raw["ttft_ms"],
        "prompt_tokens": raw["prompt_tokens"],
        "completion_tokens": raw["completion_tokens"],
        "retry_count": raw["retries"],
        "fallback_used": raw["fallback_model"] is not None,
        "fallback_model": raw["fallback_model"],
        "attempts": attempts,
        "excluded_nodes": excluded,
        "tags": tags if tags else [],
        "error_message": raw["error_message"],
        "details": _json(raw["details"]) or {},
    }


class Reader:
    """Read-only queries of one ``latency.db``; each method returns the body of one API."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        uri = self.path.resolve().as_uri() + "?mode=ro"
        self.db = await aiosqlite.connect(uri, uri=True)
        await self.db.execute("PRAGMA busy_timeout=5000")

    async def close(self) -> None:
        if self.db is not None:
            await self.db.close()
            self.db = None

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """The rows as dicts by column name."""
        assert self.db is not None
        async with self.db.execute(sql, params) as cursor:
            rows = await cursor.fetchall()
            names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in rows]

    async def _groups(self, span: Span, group: Sequence[str], *, tags: bool = False,
                      grain: int | None = None) -> list[Any]:
        """Roll-up rows of ``span`` summed per ``group``: every trace once (``tags`` False),
        or once per tag (True)."""
        grain = grain or span.grain
        start = span.start - span.start % grain
        where = f"tag {'>' if tags else '='} '' AND bucket >= ? AND bucket < ?"
        return await self._rows(aggregate_sql(grain, group, where), (start, span.end))

    async def traces(self, limit: int, span: Span | None = None) -> dict[str, Any]:
        where, params = "", [limit]
        if span is not None:
            where, params = "WHERE timestamp >= ? AND timestamp < ?", [span.start, span.end, limit]
        rows = await self._rows(f"SELECT {', '.join(_TRACE_COLUMNS)} FROM request_traces {where}"
                                " ORDER BY timestamp DESC, id DESC LIMIT ?", params)
        return {"traces": [_trace(row) for row in rows]}

    async def usage(self, span: Span) -> dict[str, Any]:
        day = f"bucket / {DAY} * {DAY}"
        daily = await self._groups(span, (day, "node_id", "model"))
        nodes = await self._groups(span, ("node_id",))
        models = await self._groups(span, ("model",))
        data = [{"node_id": row["g1"] or None, "model": row["g2"], "day_bucket": row["g0"],
                 **describe(row)} for row in daily]
        data.sort(key=lambda r: (-r["day_bucket"], r["node_id"] or "", r["model"]))
        return {
            "data": data,
            "nodes": _by_requests([{"node_id": row["g0"] or None, **describe(row, summary=True)}
                                   for row in nodes]),
            "models": _by_requests([{"model": row["g0"], **describe(row, summary=True)}
                                    for row in models]),
        }

    async def models(self, span: Span) -> dict[str, Any]:
        day = f"bucket / {DAY} * {DAY}"
        daily = await self._groups(span, ("model", day))
        per_node = await self._groups(span, ("model", "node_id"))
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in per_node:
            groups.setdefault(row["g0"], []).append(row)
        summary = []
        for model, rows in groups.items():
            nodes = []
            for row in rows:
                stats = describe(row)
                nodes.append({"node_id": row["g1"] or None,
                              **{k: stats[k] for k in _NODE_FIGURES}})
            summary.append({"model_name": model, **describe(merge(rows), summary=True),
                            "nodes": _by_requests(nodes)})
        return {
            "daily": sorted(({"model_name": row["g0"], "day_bucket": row["g1"], **describe(row)}
                             for row in daily), key=lambda r: (r["model_name"], r["day_bucket"])),
            "summary": _by_requests(summary),
        }

    async def apps(self, span: Span) -> dict[str, Any]:
        per_tag = await self._groups(span, ("tag",), tags=True)
        summary = await self._rows(aggregate_sql(DAY, ("tag",), "tag > ''"))  # all kept
        return {
            "data": _by_requests([{"tag": row["g0"], **describe(row)} for row in per_tag]),
            "summary": _by_requests([{"tag": row["g0"], **describe(row, summary=True)}
                                     for row in summary]),
        }

    async def apps_daily(self, span: Span) -> dict[str, Any]:
        day = f"bucket / {DAY} * {DAY}"
        rows = await self._groups(span, (day, "tag"), tags=True)
        data = [{"tag": row["g1"], "day_bucket": row["g0"], **describe(row)} for row in rows]
        return {"data": sorted(data, key=lambda r: (r["day_bucket"], r["tag"]))}

    async def trends(self, span: Span) -> dict[str, Any]:
        rows = await self._groups(span, ("bucket",), grain=HOUR)
        data = [{"hour_bucket": row["g0"], **describe(row)} for row in rows]
        return {"data": sorted(data, key=lambda r: r["hour_bucket"])}


def _by_requests(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Most requests first; ties by name, so an answer is stable."""
    def name(row: dict[str, Any]) -> str:
        return str(row.get("model_name") or row.get("model") or row.get("tag")
                   or row.get("node_id") or "")

    return sorted(rows, key=lambda r: (-r["request_count"], name(r)))

