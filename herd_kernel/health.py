"""The health engine: rolling per-minute tallies of finished requests and routing events, one
snapshot of the fleet built from them (cached a few seconds), every registered ``HealthCheck``
evaluated against it, and the report ``GET /dashboard/api/health`` serves (docs/health.md).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import structlog

from herd_kernel import __version__
from herd_kernel.api import Finding, HealthCheck, HealthSnapshot, Tally, Window
from herd_kernel.models import Trace, normalize_model

log = structlog.get_logger("herd.health")

HOUR, DAY = 60, 1440  # windows, in one-minute buckets
MAX_KEYS = 128  # distinct nodes, and models, tallied apart over a day; the rest go to OTHER
OTHER = "(other)"
_RANK = {"critical": 0, "warning": 1, "info": 2}
PENALTY = {"critical": 25, "warning": 10, "info": 0}  # points a finding costs
CHECK_CAP = 50  # most points one check can cost, however many findings it has


def classify(trace: Trace) -> dict[str, float]:
    """What one finished request adds to a ``Tally`` (only the fields it changes)."""
    status, details = trace.status, trace.details
    kind = {"completed": "completed", "rejected": "rejected",
            "client_disconnected": "client_disconnects"}.get(status, "failed")  # reaped, ended
    counts: dict[str, float] = {"requests": 1, kind: 1, "latency_ms_sum": trace.latency_ms}
    if kind == "failed" and trace.stream and trace.ttft_ms is not None:
        counts["incomplete_streams"] = 1  # its first bytes had reached the client
    if details.get("timeout"):
        counts["timeouts"] = 1
    # attempts beyond the first (``Trace.retries`` counts every failed attempt, so it is one
    # more than that when the last node failed too)
    retries = len(trace.attempts) - 1 if trace.attempts else trace.retries
    if retries > 0:
        counts["retried"], counts["retries"] = 1, retries
    if trace.node_id is not None and trace.original_model not in ("", trace.model) \
            and normalize_model(trace.original_model) != normalize_model(trace.model):
        counts["fallbacks"] = 1
    if kind == "completed" and details.get("cold"):
        counts["cold_loads"] = 1
    if trace.ttft_ms is not None:
        counts["ttft_ms_sum"], counts["ttft_count"] = trace.ttft_ms, 1
    if trace.prompt_tokens:
        counts["prompt_tokens"] = trace.prompt_tokens
    if trace.completion_tokens:
        counts["completion_tokens"] = trace.completion_tokens
    return counts


def by_node(trace: Trace, counts: dict[str, float]) -> list[tuple[str, dict[str, float]]]:
    """Each node's part in one request: a node whose attempt failed before another took over
    counts a failed request of its own (with the retry and the timeout it caused), so a node
    that fails a third of its requests shows it even when retries rescue every one; the node
    that answered counts the request as it ended."""
    timed_out = set(trace.details.get("timeout_nodes", ()))
    attempts = trace.attempts
    parts = []
    for index, attempt in enumerate(attempts):
        last = index == len(attempts) - 1
        if last and attempt.node_id == trace.node_id:
            part = {k: v for k, v in counts.items() if k not in ("retried", "retries", "timeouts")}
        else:  # an attempt that failed, rescued by another node or the last of a failed request
            part = {"requests": 1, "failed": 1}
            if not last:
                part["retried"] = part["retries"] = 1
        if attempt.node_id in timed_out:
            part["timeouts"] = 1
        parts.append((attempt.node_id, part))
    if not attempts and trace.node_id is not None:
        parts.append((trace.node_id, counts))
    return parts


class _Bucket:
    """Tallies and event counts: of one minute, or summed over a window."""

    __slots__ = ("minute", "total", "by_node", "by_model", "events", "node_events")

    def __init__(self, minute: int = 0) -> None:
        self.minute = minute
        self.total = Tally()
        self.by_node: dict[str, Tally] = {}
        self.by_model: dict[str, Tally] = {}
        self.events: collections.Counter[str] = collections.Counter()
        self.node_events: dict[str, collections.Counter[str]] = {}

    def merge(self, other: _Bucket, sign: int) -> None:
        """Add ``other`` (``sign`` 1) or take it away (-1); keys that reach zero are dropped."""
        _add(self.total, attrs.asdict(other.total), sign)
        if self.total.requests <= 0:
            self.total = Tally()  # no float residue once nothing is left
        for mine, theirs in ((self.by_node, other.by_node), (self.by_model, other.by_model)):
            for key, tally in theirs.items():
                target = mine.setdefault(key, Tally())
                _add(target, attrs.asdict(tally), sign)
                if target.requests <= 0:
                    del mine[key]
        _count(self.events, other.events, sign)
        for node, counts in other.node_events.items():
            if not _count(self.node_events.setdefault(node, collections.Counter()), counts, sign):
                del self.node_events[node]

    def window(self, seconds: float, current: _Bucket) -> Window:
        """This (a window's closed minutes) and ``current`` (the open minute), as copies."""
        view = _Bucket()
        view.merge(self, 1)
        view.merge(current, 1)
        return Window(seconds=seconds, total=view.total, by_node=view.by_node,
                      by_model=view.by_model, events=dict(view.events),
                      node_events={k: dict(v) for k, v in view.node_events.items()})


def _add(tally: Tally, counts: Mapping[str, float], sign: int = 1) -> None:
    for name, value in counts.items():
        if value:
            setattr(tally, name, getattr(tally, name) + sign * value)


def _count(target: collections.Counter[str], counts: Mapping[str, int], sign: int) -> int:
    for kind, n in counts.items():
        target[kind] += sign * n
        if target[kind] <= 0:
            del target[kind]
    return len(target)


class Tallies:
    """Requests and routing events over the last hour and day, in one-minute buckets. Recording
    touches only the open minute; when a minute closes it is added to the running hour and day
    sums, and a minute that leaves a window is taken away from its sum, so a snapshot costs the
    number of keys, not the length of the history."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.current = _Bucket(self._minute())
        self.hour, self.day = _Bucket(), _Bucket()
        self._in_hour: collections.deque[_Bucket] = collections.deque()
        self._in_day: collections.deque[_Bucket] = collections.deque()

    def _minute(self) -> int:
        return int(self.clock() // 60)

    def roll(self) -> _Bucket:
        """The open minute's bucket, after closing the previous one and expiring old minutes."""
        minute = self._minute()
        current = self.current
        if minute <= current.minute:  # a clock set back keeps counting in the open minute
            return current
        if current.total.requests or current.events:
            for summed, members in ((self.hour, self._in_hour), (self.day, self._in_day)):
                summed.merge(current, 1)
                members.append(current)
        for summed, members, size in ((self.hour, self._in_hour, HOUR),
                                      (self.day, self._in_day, DAY)):
            while members and members[0].minute <= minute - size:
                summed.merge(members.popleft(), -1)
        self.current = _Bucket(minute)
        return self.current

    def _key(self, key: str, current: dict[str, Any], summed: dict[str, Any]) -> str:
        """``key``, or ``OTHER`` once ``MAX_KEYS`` others are tallied (a new key is rare)."""
        if key in current or key in summed:
            return key
        return key if len(summed) + sum(k not in summed for k in current) < MAX_KEYS else OTHER

    def record(self, trace: Trace) -> None:
        """Count one finished request: O(1), a few additions."""
        bucket = self.roll()
        counts = classify(trace)
        _add(bucket.total, counts)
        for node_id, part in by_node(trace, counts):
            node = self._key(node_id, bucket.by_node, self.day.by_node)
            _add(bucket.by_node.setdefault(node, Tally()), part)
        model = self._key(normalize_model(trace.model)[:200], bucket.by_model, self.day.by_model)
        _add(bucket.by_model.setdefault(model, Tally()), counts)

    def event(self, kind: str, node_id: Any = None) -> None:
        bucket = self.roll()
        bucket.events[kind] += 1
        if isinstance(node_id, str):
            node = self._key(node_id, bucket.node_events, self.day.node_events)
            bucket.node_events.setdefault(node, collections.Counter())[kind] += 1

    def windows(self) -> tuple[Window, Window]:
        """The last hour and the last day (each with the open minute)."""
        current = self.roll()
        return self.hour.window(HOUR * 60, current), self.day.window(DAY * 60, current)


def score(findings: Iterable[Finding]) -> int:
    """100 less each finding's penalty (``PENALTY``), at most ``CHECK_CAP`` per check; 0-100."""
    lost: dict[str, int] = collections.Counter()
    for finding in findings:
        lost[finding.check_id] += PENALTY.get(finding.severity, 0)
    return max(0, 100 - sum(min(CHECK_CAP, points) for points in lost.values()))


class HealthEngine:
    """Holds the checks (with the plugin that registered each), builds snapshots, evaluates."""

    def __init__(
        self, checks: Sequence[tuple[str, HealthCheck]], *,
        status: Callable[[], Mapping[str, Any]], events: Callable[[], Sequence[Mapping[str, Any]]],
        cache_s: float = 5.0, clock: Callable[[], float] = time.time,
    ) -> None:
        self.checks = list(checks)
        self.tallies = Tallies(clock)
        self.record = self.tallies.record  # a finished request: O(1)
        self.clock, self.cache_s = clock, cache_s
        self._status, self._events = status, events
        self._report: tuple[float, HealthSnapshot, dict[str, Any]] | None = None

    def event(self, kind: str, fields: Mapping[str, Any]) -> None:
        self.tallies.event(kind, fields.get("node_id"))  # a node_id field names the node

    def snapshot(self) -> HealthSnapshot:  # both built again when older than ``cache_s``
        return self._cached()[1]

    def report(self) -> dict[str, Any]:  # the ``/dashboard/api/health`` body
        return self._cached()[2]

    def _cached(self) -> tuple[float, HealthSnapshot, dict[str, Any]]:
        now = self.clock()
        if self._report is None or not 0 <= now - self._report[0] < self.cache_s:
            snap = self.build_snapshot(now)
            self._report = (now, snap, self.evaluate(snap))
        return self._report

    def build_snapshot(self, now: float | None = None) -> HealthSnapshot:
        status = self._status()
        hour, day = self.tallies.windows()
        trace_store = status.get("trace_store") or {}
        return HealthSnapshot(
            now=self.clock() if now is None else now, router_version=__version__,
            status=status, hour=hour, day=day, events=tuple(self._events()),
            trace_store={k: v for k, v in trace_store.items() if isinstance(v, int)})

    def evaluate(self, snap: HealthSnapshot) -> dict[str, Any]:
        findings: list[Finding] = []
        for plugin, check in self.checks:
            findings += self._run(plugin, check, snap)
        findings.sort(key=lambda f: (_RANK.get(f.severity, 3), f.check_id, f.node_id or ""))
        return {
            "score": score(findings),
            "checks": [{"check_id": f.check_id, "severity": f.severity, "title": f.title,
                        "description": f.detail, "fix": f.advice, "node_id": f.node_id,
                        "data": dict(f.data)} for f in findings],
            "vitals": vitals(snap),
            "checks_run": len(self.checks),
            "generated_at": snap.now,
        }

    def _run(self, plugin: str, check: HealthCheck, snap: HealthSnapshot) -> list[Finding]:
        """A check's findings; one that raises, or returns anything but findings, gives a
        ``check_crashed`` finding naming its plugin instead (the traceback goes to the log)."""
        check_id = str(getattr(check, "id", "?"))
        try:
            found = list(check.evaluate(snap) or ())
            wrong = next((f for f in found if not isinstance(f, Finding)), None)
            if wrong is not None:
                raise TypeError(f"evaluate returned {type(wrong).__name__}, not a Finding")
            return found
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
            log.exception("health check crashed", plugin=plugin, check=check_id)
            return [Finding(
                check_id="check_crashed", severity="warning",
                title=f"Health check {check_id!r} of plugin {plugin!r} crashed",
                detail=f"{type(exc).__name__}: {exc}"[:500], data={"plugin": plugin,
                                                                   "check": check_id},
                advice=f"Its findings are missing: update or report plugin {plugin!r}, or leave "
                       "it out with --plugins (the router log has the traceback).")]


_NODES = ("nodes_total", "nodes_online", "nodes_degraded", "nodes_offline", "nodes_pending")
_DAY = ("cold_loads", "requests", "retries", "client_disconnects", "incomplete_streams",
        "timeouts")


def vitals(snap: HealthSnapshot) -> dict[str, Any]:
    """The fleet's vital signs: nodes by status now, and the last day's requests."""
    fleet, day = snap.status.get("fleet", {}), snap.day.total
    return {
        **{key: int(fleet.get(key, 0)) for key in _NODES},
        "error_rate_pct": round(100 * day.errors / day.requests, 2) if day.requests else 0.0,
        "avg_ttft_ms": round(day.ttft_ms_sum / day.ttft_count, 1) if day.ttft_count else None,
        **{f"{name}_24h": getattr(day, name) for name in _DAY},
    }
