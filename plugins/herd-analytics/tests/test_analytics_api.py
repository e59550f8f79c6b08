"""The analytics APIs over real sockets on a real SQLite file: every field on an empty database and
on generated history, the numbers equal to counts of the traces written, bad parameters refused
with a JSON 400, and a router without the plugin has no store at all."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from herd_kernel.models import Trace

DAY, HOUR = 86400, 3600
DOC = Path(__file__).resolve().parents[3] / "docs" / "analytics.md"
SPAN = {"start_ts", "end_ts"}
APIS = {  # path -> the top-level fields of its answer
    "/dashboard/api/traces": {"limit", "traces"},
    "/dashboard/api/usage": {"days", *SPAN, "data", "nodes", "models"},
    "/dashboard/api/models": {"days", *SPAN, "daily", "summary"},
    "/dashboard/api/apps": {"days", *SPAN, "data", "summary"},
    "/dashboard/api/apps/daily": {"days", *SPAN, "data"},
    "/dashboard/api/tags": {"days", *SPAN, "data", "summary"},
    "/dashboard/api/tags/daily": {"days", *SPAN, "data"},
    "/dashboard/api/trends": {"hours", *SPAN, "data"},
}


async def get(router, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(router.url + path) as response:
            assert response.content_type == "application/json", (path, response.content_type)
            return response.status, await response.json()


@pytest.fixture
async def empty(herd_router, tmp_path):
    return await herd_router(plugins="analytics", env={"FLEET_DATA_DIR": str(tmp_path / "d")})


@pytest.mark.parametrize("path", sorted(APIS))
async def test_every_api_answers_with_its_fields_on_an_empty_database(empty, path):
    status, body = await get(empty, path)
    assert status == 200
    assert set(body) == APIS[path]
    assert all(body[key] == [] for key in body if isinstance(body[key], list))


@pytest.fixture
async def year(herd_router, history, tmp_path):
    """A router on a database holding 400 days of generated history."""
    data = tmp_path / "d"
    traces = await history(data / "latency.db", 6000, days=400)
    router = await herd_router(plugins="analytics", env={
        "FLEET_DATA_DIR": str(data), "FLEET_TRACE_RETENTION_DAYS": "0"})
    return router, traces


def covered(trace: Trace, body: dict[str, Any], grain: int) -> bool:
    """Whether the roll-up bucket of ``trace`` is in the range an answer says it covers."""
    bucket = trace.timestamp // grain * grain
    return body["start_ts"] <= bucket < body["end_ts"]


def counts(values) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for value in values:
        out[value] = out.get(value, 0) + 1
    return out


async def test_traces_are_the_newest_first_with_the_reference_fields(year):
    router, traces = year
    status, body = await get(router, "/dashboard/api/traces?limit=20")
    assert status == 200 and body["limit"] == 20
    newest = sorted(traces, key=lambda t: t.timestamp, reverse=True)[:20]
    assert [t["request_id"] for t in body["traces"]] == [t.request_id for t in newest]
    first, trace = body["traces"][0], newest[0]
    assert first["model"] == trace.model and first["node_id"] == trace.node_id
    assert first["original_model"] == trace.original_model
    assert first["retry_count"] == trace.retries
    assert first["fallback_used"] == (trace.model != trace.original_model)
    assert first["tags"] == list(trace.tags)
    assert first["latency_ms"] == pytest.approx(trace.latency_ms)
    assert first["time_to_first_token_ms"] == (
        pytest.approx(trace.ttft_ms) if trace.ttft_ms is not None else None)
    assert len(first["excluded_nodes"]) == trace.retries
    status, body = await get(router, "/dashboard/api/traces")
    assert body["limit"] == 50 and len(body["traces"]) == 50


async def test_traces_in_a_time_range(year):
    router, traces = year
    end = time.time() - 100 * DAY
    start = end - 3 * DAY
    status, body = await get(router, f"/dashboard/api/traces?limit=1000&start_ts={start:.3f}"
                                     f"&end_ts={end:.3f}")
    assert status == 200
    expected = {t.request_id for t in traces if body["start_ts"] <= t.timestamp < end}
    assert expected and {t["request_id"] for t in body["traces"]} == expected


async def test_usage_counts_every_trace_per_node_model_and_day(year):
    router, traces = year
    before = time.time()
    status, body = await get(router, "/dashboard/api/usage?days=7")
    assert status == 200 and body["days"] == 7
    assert body["start_ts"] in {int(t // DAY * DAY - 6 * DAY) for t in (before, time.time())}
    inside = [t for t in traces if covered(t, body, DAY)]
    assert inside, "the history has traces in the last 7 days"
    got = {(r["day_bucket"], r["node_id"], r["model"]): r["request_count"] for r in body["data"]}
    assert got == counts((int(t.timestamp // DAY * DAY), t.node_id, t.model) for t in inside)
    assert {r["node_id"]: r["request_count"] for r in body["nodes"]} == counts(
        t.node_id for t in inside)
    assert {r["model"]: r["total_requests"] for r in body["models"]} == counts(
        t.model for t in inside)
    failed = sum(r["failed_count"] for r in body["data"])
    assert failed == sum(t.status == "failed" for t in inside)
    assert sum(r["total_prompt_tokens"] for r in body["data"]) == sum(
        t.prompt_tokens or 0 for t in inside)
    assert sum(r["total_retries"] for r in body["data"]) == sum(t.retries for t in inside)
    assert sum(r["total_fallbacks"] for r in body["data"]) == sum(
        t.model != t.original_model for t in inside)
    days = [r["day_bucket"] for r in body["data"]]
    assert days == sorted(days, reverse=True)


async def test_models_give_percentiles_speed_and_usage_per_model(year):
    router, traces = year
    status, body = await get(router, "/dashboard/api/models?days=30")
    assert status == 200
    inside = [t for t in traces if covered(t, body, DAY)]
    summary = {m["model_name"]: m for m in body["summary"]}
    assert {k: v["total_requests"] for k, v in summary.items()} == counts(t.model for t in inside)
    for name, model in summary.items():
        done = sorted(t.latency_ms for t in inside if t.model == name and t.status == "completed")
        assert model["completed_count"] == len(done)
        assert model["min_latency_ms"] == pytest.approx(done[0], abs=0.05)
        assert model["max_latency_ms"] == pytest.approx(done[-1], abs=0.05)
        assert model["avg_latency_ms"] == pytest.approx(sum(done) / len(done), abs=0.05)
        assert (model["min_latency_ms"] <= model["p50_latency_ms"] <= model["p95_latency_ms"]
                <= model["p99_latency_ms"] <= model["max_latency_ms"])
        median = done[len(done) // 2]
        assert median / 1.5 <= model["p50_latency_ms"] <= median * 1.5  # within a bucket or so
        assert model["tokens_per_s"] > 0
        assert sum(n["request_count"] for n in model["nodes"]) == model["total_requests"]
    by_day = counts((t.model, int(t.timestamp // DAY * DAY)) for t in inside)
    assert {(d["model_name"], d["day_bucket"]): d["request_count"] for d in body["daily"]} == by_day


async def test_apps_count_a_trace_once_per_tag(year):
    router, traces = year
    status, body = await get(router, "/dashboard/api/apps?days=30")
    assert status == 200
    inside = [t for t in traces if covered(t, body, DAY)]
    expected = counts(tag for t in inside for tag in set(t.tags))
    assert {a["tag"]: a["request_count"] for a in body["data"]} == expected
    for app in body["data"]:
        mine = [t for t in inside if app["tag"] in t.tags]
        failed = sum(t.status == "failed" for t in mine)
        assert app["failed_count"] == failed
        assert app["error_rate"] == pytest.approx(failed / len(mine), abs=1e-4)
        assert app["total_tokens"] == sum((t.prompt_tokens or 0) + (t.completion_tokens or 0)
                                          for t in mine)
    every = counts(tag for t in traces for tag in set(t.tags))
    assert {a["tag"]: a["total_requests"] for a in body["summary"]} == every
    status, alias = await get(router, "/dashboard/api/tags?days=30")
    assert alias == body
    status, daily = await get(router, "/dashboard/api/apps/daily?days=30")
    assert {(d["tag"], d["day_bucket"]): d["request_count"] for d in daily["data"]} == counts(
        (tag, int(t.timestamp // DAY * DAY)) for t in inside for tag in set(t.tags))


async def test_trends_are_hourly(year):
    router, traces = year
    status, body = await get(router, "/dashboard/api/trends?hours=48")
    assert status == 200 and body["hours"] == 48
    assert body["end_ts"] - body["start_ts"] == 48 * HOUR
    inside = [t for t in traces if covered(t, body, HOUR)]
    got = {row["hour_bucket"]: row["request_count"] for row in body["data"]}
    assert got == counts(int(t.timestamp // HOUR * HOUR) for t in inside)
    assert list(got) == sorted(got)
    row = body["data"][0]
    mine = [t for t in inside if t.timestamp // HOUR * HOUR == row["hour_bucket"]]
    assert row["total_prompt_tokens"] == sum(t.prompt_tokens or 0 for t in mine)
    assert row["total_completion_tokens"] == sum(t.completion_tokens or 0 for t in mine)
    # the default: 72 hours; days are hours too
    assert (await get(router, "/dashboard/api/trends"))[1]["hours"] == 72
    status, week = await get(router, "/dashboard/api/trends?days=7")
    assert week["end_ts"] - week["start_ts"] == 7 * DAY
    assert all(r["hour_bucket"] % HOUR == 0 for r in week["data"])


async def test_a_range_by_timestamps_reads_days_or_hours_as_it_falls(year):
    router, traces = year
    today = time.time() // DAY * DAY
    start, end = today - 200 * DAY, today - 190 * DAY  # day boundaries: the daily roll-ups
    status, body = await get(router, f"/dashboard/api/usage?start_ts={start:.0f}&end_ts={end:.0f}")
    assert status == 200 and (body["start_ts"], body["end_ts"]) == (start, end)
    assert sum(r["request_count"] for r in body["data"]) == sum(
        start <= t.timestamp < end for t in traces)
    start, end = start + 5 * HOUR + 17, end - 3 * HOUR  # not: the hourly ones
    status, body = await get(router, f"/dashboard/api/usage?start_ts={start}&end_ts={end}")
    assert body["start_ts"] == start - 17
    assert sum(r["request_count"] for r in body["data"]) == sum(
        covered(t, body, HOUR) for t in traces)
    status, body = await get(router, f"/dashboard/api/trends?start_ts={start}")  # up to now
    assert sum(r["request_count"] for r in body["data"]) == sum(
        t.timestamp >= start - 17 for t in traces)


BAD = [
    ("/dashboard/api/usage?days=0", "days"),
    ("/dashboard/api/usage?days=-3", "days"),
    ("/dashboard/api/usage?days=1.5", "days"),
    ("/dashboard/api/usage?days=seven", "days"),
    ("/dashboard/api/usage?days=1_0", "days"),
    ("/dashboard/api/usage?days=", "days"),
    ("/dashboard/api/models?days=99999", "days"),
    ("/dashboard/api/trends?hours=0", "hours"),
    ("/dashboard/api/trends?hours=1e3", "hours"),
    ("/dashboard/api/trends?hours=12&days=1", "hours or days"),
    ("/dashboard/api/apps?days=7&start_ts=1", "start_ts"),
    ("/dashboard/api/trends?end_ts=1735689600", "start_ts"),
    ("/dashboard/api/trends?start_ts=1735689600&end_ts=1735689600", "end_ts"),
    ("/dashboard/api/trends?start_ts=nan", "start_ts"),
    ("/dashboard/api/trends?start_ts=inf", "start_ts"),
    ("/dashboard/api/trends?start_ts=-1", "start_ts"),
    ("/dashboard/api/trends?start_ts=1e400", "start_ts"),
    ("/dashboard/api/apps/daily?start_ts=0&end_ts=999999999999", "at most"),
    ("/dashboard/api/traces?limit=0", "limit"),
    ("/dashboard/api/traces?limit=100000", "limit"),
    ("/dashboard/api/traces?limit=ten", "limit"),
    ("/dashboard/api/traces?limit=5&hours=x", "hours"),
]


@pytest.mark.parametrize("query,named", BAD, ids=[q.split("api/")[1] for q, _ in BAD])
async def test_a_bad_parameter_is_a_json_400_that_names_it(empty, query, named):
    status, body = await get(empty, query)
    assert status == 400
    assert set(body) == {"error"} and named in body["error"]


async def test_the_store_counters_are_a_section_of_the_fleet_status(empty):
    empty.services.record(Trace(request_id="x", timestamp=time.time(), model="m", api="ollama",
                                path="/api/chat", node_id=None, status="rejected",
                                http_status=503, latency_ms=1.0))
    from herd_analytics import store_of

    await store_of(empty.services).flush()
    status, body = await get(empty, "/fleet/status")
    assert body["trace_store"] == {"written": 1, "dropped": 0, "failed": 0, "queued": 0}
    status, traces = await get(empty, "/dashboard/api/traces")
    assert [t["request_id"] for t in traces["traces"]] == ["x"]


async def test_without_the_plugin_there_is_no_store(herd_router, tmp_path):
    data = tmp_path / "d"
    router = await herd_router(plugins="backend-ollama", env={"FLEET_DATA_DIR": str(data)})
    router.services.record(Trace(request_id="x", timestamp=time.time(), model="m", api="ollama",
                                 path="/api/chat", node_id=None, status="rejected",
                                 http_status=503, latency_ms=1.0))
    status, body = await get(router, "/fleet/status")
    assert status == 200 and "trace_store" not in body
    assert not list(data.glob("latency.db*"))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{router.url}/dashboard/api/usage") as response:
            assert response.status == 404


async def test_a_store_that_cannot_open_leaves_the_apis_503_and_the_router_up(herd_router,
                                                                             tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")  # the data dir cannot be made here
    router = await herd_router(plugins="analytics", env={"FLEET_DATA_DIR": str(blocked)})
    status, body = await get(router, "/dashboard/api/usage")
    assert status == 503 and "trace store is not open" in body["error"]
    status, body = await get(router, "/fleet/status")
    assert status == 200 and "trace_store" not in body


def every_key(value: Any, found: set[str]) -> set[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            found.add(key)
            if key not in ("details", "scores_breakdown"):  # free-form maps
                every_key(item, found)
    elif isinstance(value, list):
        for item in value:
            every_key(item, found)
    return found


async def test_every_field_the_apis_answer_is_documented(year):
    router, _traces = year
    text = DOC.read_text()
    documented = set(re.findall(r"`([a-z_0-9]+)`", text))
    keys: set[str] = set()
    for path in APIS:
        status, body = await get(router, path + ("?days=400" if "traces" not in path else ""))
        assert status == 200
        every_key(body, keys)
    assert keys - documented == set(), "docs/analytics.md does not describe these fields"
