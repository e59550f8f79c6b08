"""The analytics APIs under ``/dashboard/api/``: query parameters read and checked here (a bad
one is a 400 ``{"error": ...}``), the answer from the read-only ``Reader``. Fields are documented
in docs/analytics.md.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from herd_analytics.rollups import DAY, HOUR, Span
from herd_kernel.api import RouteDef

if TYPE_CHECKING:
    from herd_analytics import Analytics
    from herd_analytics.reader import Reader

MAX_DAYS = 3660  # ten years: any range the roll-ups can hold
MAX_TRACES = 1000
_INTEGER = re.compile(r"[0-9]{1,9}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}(?:\.[0-9]{0,9})?")
RANGE = ("hours", "days", "start_ts", "end_ts")


class ParamError(ValueError):
    """A query parameter the API cannot take; the message says which and why."""


def _integer(query: Mapping[str, str], name: str, low: int, high: int) -> int:
    text = query[name].strip()
    if not _INTEGER.fullmatch(text) or not low <= int(text) <= high:
        raise ParamError(f"{name} must be a whole number from {low} to {high}, not {text[:40]!r}")
    return int(text)


def _timestamp(query: Mapping[str, str], name: str) -> float:
    text = query[name].strip()
    if not _TIMESTAMP.fullmatch(text):
        raise ParamError(f"{name} must be a Unix time in seconds (e.g. 1735689600), "
                         f"not {text[:40]!r}")
    return float(text)


def parse_span(query: Mapping[str, str], *, default: tuple[str, int], hourly: bool = False,
               now: float | None = None) -> Span:
    """The range of ``hours=N`` (the last N hours, this one included), ``days=N`` (the last N
    UTC days, today included) or ``start_ts``/``end_ts`` (Unix seconds; ``end_ts`` defaults to
    now), else ``default``. Roll-ups are read by the day unless the range is given in hours or
    does not fall on day boundaries (or ``hourly``: the trends)."""
    now = time.time() if now is None else now
    given = [name for name in RANGE if name in query]
    if "hours" in given and "days" in given:
        raise ParamError("give hours or days, not both")
    if {"start_ts", "end_ts"} & set(given):
        if {"hours", "days"} & set(given):
            raise ParamError("give hours or days, or start_ts and end_ts, not both")
        if "start_ts" not in given:
            raise ParamError("end_ts needs a start_ts")
        start = _timestamp(query, "start_ts")
        end = _timestamp(query, "end_ts") if "end_ts" in query else now
        if end <= start:
            raise ParamError("end_ts must be after start_ts")
        if end - start > MAX_DAYS * DAY:
            raise ParamError(f"a range may cover at most {MAX_DAYS} days")
        grain = HOUR if hourly or start % DAY or end % DAY else DAY
        return Span(start=int(start // grain * grain), end=end, grain=grain, echo={})
    if "hours" in given:
        name, count = "hours", _integer(query, "hours", 1, MAX_DAYS * 24)
    elif "days" in given:
        name, count = "days", _integer(query, "days", 1, MAX_DAYS)
    else:
        name, count = default
    unit = HOUR if name == "hours" else DAY
    current = int(now // unit * unit)
    return Span(start=current - (count - 1) * unit, end=float(current + unit),
                grain=HOUR if hourly else unit, echo={name: count})


def parse_limit(query: Mapping[str, str], default: int = 50) -> int:
    return _integer(query, "limit", 1, MAX_TRACES) if "limit" in query else default


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _endpoint(analytics: Analytics,
              answer: Callable[[Reader, Mapping[str, str]], Awaitable[dict[str, Any]]]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        reader = analytics.reader
        if reader is None:
            return web.json_response(
                {"error": "the trace store is not open (the router's log says why)"}, status=503)
        try:
            body = await answer(reader, request.query)
        except ParamError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(body)

    return handler


async def _traces(reader: Reader, query: Mapping[str, str]) -> dict[str, Any]:
    limit = parse_limit(query)
    if any(name in query for name in RANGE):
        span = parse_span(query, default=("days", 1))
        return {"limit": limit, **span.fields, **await reader.traces(limit, span)}
    return {"limit": limit, **await reader.traces(limit)}


def _ranged(method: str, default: tuple[str, int], *, hourly: bool = False,
            ) -> Callable[[Reader, Mapping[str, str]], Awaitable[dict[str, Any]]]:
    """An API that reads the roll-ups of a range (``default`` when the query names none)."""

    async def answer(reader: Reader, query: Mapping[str, str]) -> dict[str, Any]:
        span = parse_span(query, default=default, hourly=hourly)
        return {**span.fields, **await getattr(reader, method)(span)}

    return answer


def routes(analytics: Analytics) -> list[RouteDef]:
    """The API routes, behind the ``/fleet/*`` read guard."""
    week = ("days", 7)
    apps, apps_daily = _ranged("apps", week), _ranged("apps_daily", week)
    paths = {
        "/dashboard/api/traces": _traces,
        "/dashboard/api/usage": _ranged("usage", week),
        "/dashboard/api/models": _ranged("models", week),
        "/dashboard/api/apps": apps,
        "/dashboard/api/apps/daily": apps_daily,
        "/dashboard/api/tags": apps,  # the reference's name for the apps page
        "/dashboard/api/tags/daily": apps_daily,
        "/dashboard/api/trends": _ranged("trends", ("hours", 72), hourly=True),
    }
    return [RouteDef(method="GET", path=path, handler=_endpoint(analytics, answer), access="read")
            for path, answer in paths.items()]
