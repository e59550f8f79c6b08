"""Hourly and daily roll-ups of ``request_traces``: what every analytics API reads, so an answer
costs the same on a year of history as on a day.

A roll-up row is keyed by ``(tag, bucket, node_id, model)``. Rows with ``tag = ''`` count every
trace once, per node (``''``: none chose one) and model; a trace with tags also counts once in
the row of each of its distinct tags, where ``node_id`` and ``model`` are ``''`` (per-app figures
do not split by node or model, which keeps the tables small). Rows hold sums (so rows add up),
the extremes, and a fixed histogram of completed latencies from which p50/p95/p99 are read. The
same SQL statement builds them for each batch the writer commits and, once, from an older
database's rows.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import Any

from attrs import frozen

HOUR = 3600
DAY = 86400
TABLES = {HOUR: "rollup_hourly", DAY: "rollup_daily"}

#: upper bounds (ms) of the latency histogram's buckets, a factor of sqrt(2) apart from 10 ms to
#: 463 s; one more bucket holds everything above. A percentile read from it is exact to within
#: its bucket, and is interpolated inside it.
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(round(10 * 2 ** (k / 2), 1) for k in range(32))
HISTOGRAM = tuple(f"lat_{i}" for i in range(len(LATENCY_BOUNDS_MS) + 1))

_LAT = "lat IS NOT NULL"  # a completed request with a latency
_GEN = f"{_LAT} AND completion_tokens IS NOT NULL"
#: summed columns: name -> the expression summed over the traces of a row
SUMS: dict[str, str] = {
    "requests": "1",
    "completed": "status = 'completed'",
    "failed": "status = 'failed'",
    "rejected": "status = 'rejected'",
    "disconnected": "status = 'client_disconnected'",
    "other": "status NOT IN ('completed', 'failed', 'rejected', 'client_disconnected')",
    "retried": "retries > 0",
    "retries": "retries",
    "fallbacks": "fallback_model IS NOT NULL",
    "latency_count": f"{_LAT}",
    "latency_sum": f"CASE WHEN {_LAT} THEN latency_ms END",
    "ttft_count": "status = 'completed' AND ttft_ms IS NOT NULL",
    "ttft_sum": "CASE WHEN status = 'completed' THEN ttft_ms END",
    "prompt_tokens": "prompt_tokens",
    "completion_tokens": "completion_tokens",
    # generation speed: completion tokens over the time after the first token
    "gen_tokens": f"CASE WHEN {_GEN} THEN completion_tokens END",
    "gen_ms": f"CASE WHEN {_GEN} THEN max(latency_ms - coalesce(ttft_ms, 0), 0) END",
    **{name: f"lat = {i}" for i, name in enumerate(HISTOGRAM)},
}
_REAL_SUMS = {"latency_sum", "ttft_sum", "gen_ms"}
#: (column, aggregate, expression): kept as the smallest or largest value seen
EXTREMES: tuple[tuple[str, str, str], ...] = (
    ("latency_min", "min", f"CASE WHEN {_LAT} THEN latency_ms END"),
    ("latency_max", "max", f"CASE WHEN {_LAT} THEN latency_ms END"),
    ("first_ts", "min", "timestamp"),
    ("last_ts", "max", "timestamp"),
)
KEY = ("tag", "bucket", "node_id", "model")
COLUMNS = (*SUMS, *(name for name, _, _ in EXTREMES))


@frozen(kw_only=True)
class Span:
    """The time range an API call covers: roll-up buckets of ``grain`` seconds from ``start``
    (a bucket boundary) up to ``end`` (exclusive); ``echo`` is how the caller asked for it."""

    start: int
    end: float
    grain: int
    echo: dict[str, Any]

    @property
    def fields(self) -> dict[str, Any]:
        return {**self.echo, "start_ts": self.start, "end_ts": self.end}


def schema() -> str:
    tables = []
    for table in TABLES.values():
        sums = ",\n    ".join(
            f"{name} {'REAL' if name in _REAL_SUMS else 'INTEGER'} NOT NULL DEFAULT 0"
            for name in SUMS)
        extremes = ",\n    ".join(f"{name} REAL" for name, _, _ in EXTREMES)
        tables.append(f"""
CREATE TABLE IF NOT EXISTS {table} (
    tag TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    node_id TEXT NOT NULL,
    model TEXT NOT NULL,
    {sums},
    {extremes},
    PRIMARY KEY (tag, bucket, node_id, model)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {table}_bucket ON {table} (bucket);""")
    return "\n".join(tables)


def _latency_bucket_sql() -> str:
    whens = " ".join(f"WHEN latency_ms < {bound} THEN {i}"
                     for i, bound in enumerate(LATENCY_BOUNDS_MS))
    return f"CASE {whens} ELSE {len(LATENCY_BOUNDS_MS)} END"


def latency_bucket(latency_ms: float) -> int:
    """The histogram bucket of ``latency_ms``, as the roll-up SQL puts it."""
    return bisect.bisect_right(LATENCY_BOUNDS_MS, latency_ms)


_FACTS = ("status, latency_ms, ttft_ms, prompt_tokens, completion_tokens, retries, fallback_model, "
          "timestamp")


def rollup_sql(grain: int) -> str:
    """Add the traces with ``id > :after`` to the roll-ups of ``grain`` (one statement).

    Timestamps outside years 1970 to 5138 are left out (a bucket must stay an integer); tags are
    the distinct non-empty strings of a trace's ``tags`` array.
    """
    table = TABLES[grain]
    sums = ",\n    ".join(
        f"{'total' if name in _REAL_SUMS else 'CAST(total'}({expr})"
        f"{'' if name in _REAL_SUMS else ' AS INTEGER)'}"
        for name, expr in SUMS.items())
    extremes = ", ".join(f"{agg}({expr})" for _, agg, expr in EXTREMES)
    updates = [f"{name} = {name} + excluded.{name}" for name in SUMS]
    for name, agg, _ in EXTREMES:
        op = "<" if agg == "min" else ">"
        updates.append(f"{name} = CASE WHEN {name} IS NULL OR excluded.{name} {op} {name} "
                       f"THEN excluded.{name} ELSE {name} END")
    return f"""
WITH batch AS (
    SELECT id, CAST(timestamp / {grain} AS INTEGER) * {grain} AS bucket,
           coalesce(node_id, '') AS node_id, model, tags, {_FACTS},
           CASE WHEN status = 'completed' AND latency_ms IS NOT NULL
                THEN {_latency_bucket_sql()} END AS lat
    FROM request_traces
    WHERE id > :after AND +timestamp >= 0 AND +timestamp < 1e11  -- by id, not the time index
), facts AS (
    SELECT '' AS tag, bucket, node_id, model, {_FACTS}, lat FROM batch
    UNION ALL
    SELECT tag, bucket, '' AS node_id, '' AS model, {_FACTS}, lat FROM (
        SELECT DISTINCT batch.id, j.value AS tag, bucket, {_FACTS}, lat
        FROM batch, json_each(CASE WHEN json_valid(batch.tags) AND json_type(batch.tags) = 'array'
                                   THEN batch.tags ELSE '[]' END) AS j
        WHERE j.type = 'text' AND j.value <> '')
)
INSERT INTO {table} ({", ".join(KEY)}, {", ".join(COLUMNS)})
SELECT {", ".join(KEY)},
    {sums},
    {extremes}
FROM facts WHERE true
GROUP BY {", ".join(KEY)}
ON CONFLICT ({", ".join(KEY)}) DO UPDATE SET
    {(","+chr(10)+"    ").join(updates)}
"""


def aggregate_sql(grain: int, group: Sequence[str], where: str) -> str:
    """``SELECT <group>, <every column summed or extreme> FROM <table of grain> WHERE <where>
    GROUP BY <group>``; ``group`` are SQL expressions (``model``, ``bucket / 86400 * 86400``)."""
    table = TABLES[grain]
    sums = ", ".join(f"total({name}) AS {name}" for name in SUMS)
    extremes = ", ".join(f"{agg}({name}) AS {name}" for name, agg, _ in EXTREMES)
    keys = ", ".join(f"{expr} AS g{i}" for i, expr in enumerate(group))
    by = ", ".join(f"g{i}" for i in range(len(group)))
    select = f"SELECT {keys + ', ' if keys else ''}{sums}, {extremes} FROM {table} WHERE {where}"
    return f"{select} GROUP BY {by}" if group else select


def merge(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregated rows added together (sums summed, extremes kept), as one ``aggregate_sql``
    row over their union would be."""
    merged: dict[str, Any] = {name: sum(row[name] or 0 for row in rows) for name in SUMS}
    for name, agg, _ in EXTREMES:
        values = [row[name] for row in rows if row[name] is not None]
        merged[name] = (min if agg == "min" else max)(values) if values else None
    return merged


def percentile(counts: Sequence[float], q: float, low: float | None = None,
               high: float | None = None) -> float | None:
    """The ``q`` quantile (0..1) of the latencies a histogram counts (``percentiles``)."""
    return percentiles(counts, (q,), low, high)[0]


def percentiles(counts: Sequence[float], qs: Sequence[float], low: float | None = None,
                high: float | None = None) -> list[float | None]:
    """The ``qs`` quantiles (0..1, ascending) of the latencies a histogram counts, in one pass:
    each found in its bucket and interpolated linearly there, within the smallest and largest
    latency seen (``low``, ``high``) when they are known."""
    total = sum(counts)
    if total <= 0:
        return [None] * len(qs)
    found: list[float | None] = []
    wanted = iter(qs)
    q = next(wanted, None)
    seen = 0.0
    last = len(LATENCY_BOUNDS_MS)
    for i, count in enumerate(counts):
        while q is not None and count and seen + count >= q * total:
            lower = LATENCY_BOUNDS_MS[i - 1] if i > 0 else 0.0
            upper = LATENCY_BOUNDS_MS[i] if i < last else (high if high is not None else lower)
            if low is not None:
                lower, upper = max(lower, low), max(upper, low)
            if high is not None:
                lower, upper = min(lower, high), min(upper, high)
            share = (q * total - seen) / count
            found.append(lower + (upper - lower) * max(0.0, min(1.0, share)))
            q = next(wanted, None)
        seen += count
    return found + [high] * (len(qs) - len(found))


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


_QUANTILES = (0.50, 0.95, 0.99)


def describe(row: Mapping[str, Any], *, summary: bool = False) -> dict[str, Any]:
    """The API fields of one aggregated row (``aggregate_sql``'s columns by name): counts by
    status, latency (completed requests), time to first token, tokens, retries, fallbacks."""
    requests = int(row["requests"] or 0)
    failed = row["failed"] or 0
    latencies = row["latency_count"] or 0
    ttfts = row["ttft_count"] or 0
    gen_ms = row["gen_ms"] or 0
    low, high = row["latency_min"], row["latency_max"]
    p50, p95, p99 = percentiles([row[name] or 0 for name in HISTOGRAM], _QUANTILES, low, high)
    prompt, completion = int(row["prompt_tokens"] or 0), int(row["completion_tokens"] or 0)
    fields: dict[str, Any] = {"total_requests": requests} if summary else {}
    fields.update({
        "request_count": requests,
        "completed_count": int(row["completed"] or 0),
        "failed_count": int(failed),
        "rejected_count": int(row["rejected"] or 0),
        "client_disconnected_count": int(row["disconnected"] or 0),
        "other_count": int(row["other"] or 0),
        "error_rate": round(failed / requests, 4) if requests else 0.0,
        "avg_latency_ms": round(row["latency_sum"] / latencies, 1) if latencies else None,
        "min_latency_ms": _round(low),
        "max_latency_ms": _round(high),
        "p50_latency_ms": _round(p50),
        "p95_latency_ms": _round(p95),
        "p99_latency_ms": _round(p99),
        "avg_ttft_ms": round(row["ttft_sum"] / ttfts, 1) if ttfts else None,
        "total_prompt_tokens": prompt,
        "total_completion_tokens": completion,
        "total_tokens": prompt + completion,
        "tokens_per_s": round(row["gen_tokens"] * 1000 / gen_ms, 1) if gen_ms > 0 else None,
        "retried_count": int(row["retried"] or 0),
        "total_retries": int(row["retries"] or 0),
        "total_fallbacks": int(row["fallbacks"] or 0),
        "first_seen": row["first_ts"],
        "last_seen": row["last_ts"],
    })
    return fields
