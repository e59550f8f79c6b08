"""The router's numbers for Prometheus: counters and histograms kept per finished request (a few
dict updates each, whatever the history), and gauges read from the health engine's snapshot when
``/metrics`` is scraped. Label sets are bounded: past the cap, a new model, node or route is
counted as ``other``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from herd_kernel.api import HealthSnapshot
from herd_kernel.models import Trace, normalize_model
from herd_metrics_prometheus.exposition import Histogram, Labels, Writer

OTHER = "other"
LATENCY_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
QUEUE_S = (0.0, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)
NODE_STATUSES = ("online", "degraded", "offline", "pending")
_MAX_ROUTES = 64
_MAX_EVENT_KINDS = 64


class Bounded:
    """Label values as seen, up to ``cap`` distinct ones; every later new one is ``other``."""

    __slots__ = ("cap", "seen")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) >= self.cap:
            return OTHER
        self.seen.add(value)
        return value


class Metrics:
    def __init__(self, max_models: int = 100, max_nodes: int = 300) -> None:
        self.model = Bounded(max_models)
        self.node = Bounded(max_nodes)
        self.route = Bounded(_MAX_ROUTES)
        self.event_kind = Bounded(_MAX_EVENT_KINDS)
        self.requests: dict[tuple[str, str, str, str, str], int] = {}
        self.latency: dict[Labels, Histogram] = {}
        self.ttft: dict[Labels, Histogram] = {}
        self.queued: dict[Labels, Histogram] = {}
        self.tokens: dict[tuple[str, str], int] = {}
        self.retries: dict[str, int] = {}  # node that failed -> attempts it made others take
        self.retried = 0
        self.fallbacks: dict[str, int] = {}  # model asked for -> requests another one served
        self.events: dict[str, int] = {}
        self._last_event: Mapping[str, Any] | None = None
        self._last_event_at = 0.0

    # --- per finished request: O(1) ---------------------------------------------------------

    def record(self, trace: Trace) -> None:
        model = self.model(normalize_model(trace.model)[:200])
        node = self.node(trace.node_id) if trace.node_id is not None else ""
        key = (self.route(trace.path), model, node, trace.status, str(trace.http_status))
        self.requests[key] = self.requests.get(key, 0) + 1
        by_model: Labels = (("model", model),)
        if trace.status == "completed":
            _observe(self.latency, by_model, LATENCY_S, trace.latency_ms / 1000)
        if trace.ttft_ms is not None:
            _observe(self.ttft, by_model, TTFT_S, trace.ttft_ms / 1000)
        if trace.node_id is not None:
            queued_ms = trace.details.get("queued_ms", 0.0)
            if isinstance(queued_ms, int | float):
                _observe(self.queued, (("node", node), ("model", model)), QUEUE_S,
                         queued_ms / 1000)
        for direction, count in (("in", trace.prompt_tokens), ("out", trace.completion_tokens)):
            if count:
                self.tokens[(model, direction)] = self.tokens.get((model, direction), 0) + count
        attempts = trace.attempts
        if len(attempts) > 1:
            self.retried += 1
            for attempt in attempts[:-1]:
                failed = self.node(attempt.node_id)
                self.retries[failed] = self.retries.get(failed, 0) + 1
        asked = trace.original_model
        if trace.node_id is not None and asked and \
                normalize_model(asked) != normalize_model(trace.model):
            asked = self.model(normalize_model(asked)[:200])
            self.fallbacks[asked] = self.fallbacks.get(asked, 0) + 1

    # --- at scrape time -----------------------------------------------------------------------

    def count_events(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Count the routing events that arrived since the last scrape: those after the last one
        counted (the list is bounded and oldest first; if that one has left it, by time)."""
        start = 0
        if self._last_event is not None:
            for index in range(len(events) - 1, -1, -1):
                if events[index] is self._last_event:
                    start = index + 1
                    break
            else:
                start = next((i for i, e in enumerate(events)
                              if _stamp(e) > self._last_event_at), len(events))
        for event in events[start:]:
            kind = self.event_kind(str(event.get("kind", "")))
            self.events[kind] = self.events.get(kind, 0) + 1
        if events:
            self._last_event, self._last_event_at = events[-1], _stamp(events[-1])

    def render(self, snapshot: HealthSnapshot, report: Mapping[str, Any]) -> str:
        self.count_events(snapshot.events)
        out = Writer()
        out.family("herd_requests", "counter",
                   "Finished requests by route, model, node (empty: none was chosen), status "
                   "(completed, failed, client_disconnected, rejected) and HTTP code.",
                   ((_zip(("route", "model", "node", "status", "code"), key), n)
                    for key, n in self.requests.items()))
        out.histograms("herd_request_duration_seconds",
                       "Whole time of completed requests in the router, by model.",
                       LATENCY_S, self.latency)
        out.histograms("herd_time_to_first_token_seconds",
                       "Time to the first byte of the answer reaching the client, by model.",
                       TTFT_S, self.ttft)
        out.histograms("herd_queue_wait_seconds",
                       "Time requests waited in the router's queue for a slot, by node and model.",
                       QUEUE_S, self.queued)
        out.family("herd_tokens", "counter",
                   "Tokens by model: in (the prompt) and out (the completion), as nodes reported.",
                   ((_zip(("model", "direction"), key), n) for key, n in self.tokens.items()))
        out.family("herd_retried_requests", "counter",
                   "Requests that needed another node after one failed before the first byte.",
                   [((), self.retried)])
        out.family("herd_retries", "counter",
                   "Failed attempts that sent a request on to another node, by the node that "
                   "failed.", ((((("node", node),), n) for node, n in self.retries.items())))
        out.family("herd_fallbacks", "counter",
                   "Requests served by a model other than the one asked for, by the one asked.",
                   ((((("model", m),), n) for m, n in self.fallbacks.items())))
        out.family("herd_routing_events", "counter",
                   "Routing events by kind: context protection, fallbacks, pre-warms, reaped "
                   "requests, model loads and unloads (counted from the router's recent events "
                   "at each scrape).", ((((("kind", k),), n) for k, n in self.events.items())))
        _fleet(out, snapshot.status)
        _health(out, report)
        _trace_store(out, snapshot.trace_store)
        return out.text()


def _observe(series: dict[Labels, Histogram], labels: Labels, bounds: Sequence[float],
             value: float) -> None:
    hist = series.get(labels)
    if hist is None:
        hist = series[labels] = Histogram(len(bounds))
    hist.observe(bounds, value)


def _zip(names: Sequence[str], values: Sequence[str]) -> Labels:
    return tuple(zip(names, values, strict=True))


def _stamp(event: Mapping[str, Any]) -> float:
    stamp = event.get("timestamp", 0.0)
    return float(stamp) if isinstance(stamp, int | float) else 0.0


def _fleet(out: Writer, status: Mapping[str, Any]) -> None:
    """Nodes and queues as the snapshot holds them (refreshed every FLEET_HEALTH_CACHE_S)."""
    nodes = [n for n in status.get("nodes", ()) if isinstance(n, Mapping)]
    out.family("herd_node_status", "gauge",
               "1 for each node's current status (online, degraded, offline, pending), else 0.",
               ((_zip(("node", "status"), (str(n.get("node_id")), s)),
                 int(n.get("status") == s)) for n in nodes for s in NODE_STATUSES))
    queues = [q for q in (status.get("queues") or {}).values() if isinstance(q, Mapping)]

    def per_lane(field: str) -> Iterable[tuple[Labels, float]]:
        for lane in queues:
            value = lane.get(field)
            if isinstance(value, int | float):
                yield _zip(("node", "model"), (str(lane.get("node")), str(lane.get("model")))), \
                    value

    out.family("herd_queue_depth", "gauge", "Requests waiting for a slot, by node and model.",
               per_lane("pending"))
    out.family("herd_queue_in_flight", "gauge", "Requests running, by node and model.",
               per_lane("in_flight"))
    out.family("herd_queue_limit", "gauge", "Requests a node:model runs at once (its slots).",
               per_lane("limit"))
    out.family("herd_queue_estimated_wait_seconds", "gauge",
               "How long a new request would wait for a slot, by node and model (absent until "
               "the lane has latency history).", per_lane("estimated_wait_s"))
    holding = status.get("holding")
    out.family("herd_holding_queue_depth", "gauge",
               "Requests waiting while no node that has their model can serve them.",
               [((), holding if isinstance(holding, int) else 0)])


def _health(out: Writer, report: Mapping[str, Any]) -> None:
    score = report.get("score")
    out.family("herd_health_score", "gauge",
               "The health engine's score, 0-100 (100: no findings).",
               [((), score)] if isinstance(score, int | float) else [])
    severities = {"info": 0, "warning": 0, "critical": 0}
    for check in report.get("checks", ()):
        severity = check.get("severity") if isinstance(check, Mapping) else None
        if severity in severities:
            severities[severity] += 1
    out.family("herd_health_findings", "gauge", "Current health findings by severity.",
               ((((("severity", s),), n) for s, n in severities.items())))


def _trace_store(out: Writer, store: Mapping[str, int]) -> None:
    if not store:  # no trace store in this router
        return
    for field, help_text in (("written", "Traces written to the trace store."),
                             ("dropped", "Traces dropped because the write queue was full."),
                             ("failed", "Traces the database refused.")):
        if field in store:
            out.family(f"herd_trace_store_{field}", "counter", help_text,
                       [((), store[field])])
    if "queued" in store:
        out.family("herd_trace_store_queued", "gauge",
                   "Traces waiting to be written: the store's write lag, in traces.",
                   [((), store["queued"])])
