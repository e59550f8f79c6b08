"""The exposition writer and the counters, with no server: what Prometheus' own parser reads
back, hostile label values, bounded label sets, routing events counted once."""

from __future__ import annotations

import attrs
import pytest
from herd_metrics_prometheus.exposition import Histogram, Writer, escape
from herd_metrics_prometheus.metrics import LATENCY_S, OTHER, Metrics
from prometheus_client.parser import text_string_to_metric_families

from herd_kernel.models import Attempt, Trace
from herd_kernel.testing import health_snapshot

HOSTILE = 'evil"} 1\nherd_fake{x="y\\'


def parse(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def trace(**fields) -> Trace:
    base = dict(request_id="r", timestamp=0.0, model="llama3.2:3b", api="ollama",
                path="/api/chat", node_id="alpha", status="completed", http_status=200,
                latency_ms=420.0, ttft_ms=30.0, prompt_tokens=11, completion_tokens=7)
    return Trace(**{**base, **fields})


def test_label_values_are_escaped_so_a_node_name_cannot_forge_lines():
    assert escape('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert escape("\ud800x") == "?x"  # a lone surrogate cannot go out as UTF-8
    out = Writer()
    out.family("herd_x", "gauge", "help with \\ and\nnewline", [((("node", HOSTILE),), 1)])
    [family] = text_string_to_metric_families(out.text())
    [sample] = family.samples
    assert sample.labels == {"node": HOSTILE} and sample.value == 1
    assert "herd_fake" not in {f.name for f in text_string_to_metric_families(out.text())}


def test_histograms_are_cumulative_with_sum_and_count():
    hist = Histogram(len(LATENCY_S))
    for seconds in (0.01, 0.3, 0.3, 7.0, 999.0):
        hist.observe(LATENCY_S, seconds)
    out = Writer()
    out.histograms("herd_h", "h", LATENCY_S, {(("model", "m"),): hist})
    samples = parse(out.text())["herd_h"]
    buckets = {s.labels["le"]: s.value for s in samples if s.name == "herd_h_bucket"}
    assert buckets["0.05"] == 1 and buckets["0.5"] == 3 and buckets["10.0"] == 4
    assert buckets["+Inf"] == 5
    assert [s.value for s in samples if s.name == "herd_h_count"] == [5]
    assert [s.value for s in samples if s.name == "herd_h_sum"] == [pytest.approx(1006.61)]


def test_requests_are_counted_with_bounded_labels():
    metrics = Metrics(max_models=2, max_nodes=2)
    metrics.record(trace())
    metrics.record(trace(model="qwen2.5:7b", node_id=HOSTILE))
    metrics.record(trace(model="third:1b", node_id="gamma"))  # beyond both caps
    metrics.record(trace(status="rejected", http_status=503, node_id=None, ttft_ms=None,
                         prompt_tokens=None, completion_tokens=None))
    metrics.record(trace(status="failed", http_status=502, model="qwen2.5:7b",
                         attempts=(Attempt(node_id="alpha", outcome="refused"),
                                   Attempt(node_id="gamma", outcome="refused"),
                                   Attempt(node_id=HOSTILE, outcome="refused"))))
    metrics.record(trace(original_model="big:70b", model="llama3.2:3b"))
    text = metrics.render(health_snapshot(), {"score": 100, "checks": []})
    families = parse(text)
    requests = {(s.labels["model"], s.labels["node"], s.labels["status"], s.labels["code"]):
                s.value for s in families["herd_requests"]}
    assert requests[("llama3.2:3b", "alpha", "completed", "200")] == 2
    assert requests[("qwen2.5:7b", HOSTILE, "completed", "200")] == 1
    assert requests[(OTHER, OTHER, "completed", "200")] == 1
    assert requests[("llama3.2:3b", "", "rejected", "503")] == 1
    assert {s.labels["model"] for s in families["herd_requests"]} <= {
        "llama3.2:3b", "qwen2.5:7b", OTHER}
    tokens = {(s.labels["model"], s.labels["direction"]): s.value
              for s in families["herd_tokens"]}
    assert tokens[("llama3.2:3b", "in")] == 22 and tokens[("llama3.2:3b", "out")] == 14
    retries = {s.labels["node"]: s.value for s in families["herd_retries"]}
    assert retries == {"alpha": 1, OTHER: 1}
    assert families["herd_retried_requests"][0].value == 1
    assert {s.labels["model"]: s.value for s in families["herd_fallbacks"]} == {OTHER: 1}
    counts = {s.labels["model"]: s.value for s in families["herd_request_duration_seconds"]
              if s.name.endswith("_count")}
    assert counts == {"llama3.2:3b": 2, "qwen2.5:7b": 1, OTHER: 1}  # completed ones only
    assert families["herd_health_score"][0].value == 100


def test_routing_events_are_counted_once_across_scrapes():
    metrics = Metrics()
    first = [{"kind": "prewarm", "timestamp": 1.0}, {"kind": "context_reload_needed",
                                                     "timestamp": 2.0}]
    metrics.count_events(first)
    metrics.count_events(first)  # the same snapshot scraped again: nothing new
    later = [*first[1:], {"kind": "prewarm", "timestamp": 3.0}]  # the oldest left the list
    metrics.count_events(later)
    assert metrics.events == {"prewarm": 2, "context_reload_needed": 1}
    # the last one counted has left the bounded list too: what is newer counts, by time
    metrics.count_events([{"kind": "reaped", "timestamp": 4.0}])
    assert metrics.events == {"prewarm": 2, "context_reload_needed": 1, "reaped": 1}


def test_fleet_state_and_trace_store_come_from_the_snapshot():
    status = {
        "nodes": [{"node_id": "alpha", "status": "online"},
                  {"node_id": HOSTILE, "status": "offline"}],
        "queues": {"alpha:llama3.2:3b": {"node": "alpha", "model": "llama3.2:3b", "limit": 4,
                                          "in_flight": 2, "pending": 3,
                                          "estimated_wait_s": None}},
        "holding": 1,
    }
    snap = attrs.evolve(health_snapshot(trace_store={"written": 9, "dropped": 1, "failed": 2,
                                                     "queued": 5}), status=status)
    report = {"score": 80, "checks": [{"severity": "warning"}, {"severity": "critical"}]}
    families = parse(Metrics().render(snap, report))
    node_status = {(s.labels["node"], s.labels["status"]): s.value
                   for s in families["herd_node_status"]}
    assert node_status[("alpha", "online")] == 1 and node_status[("alpha", "offline")] == 0
    assert node_status[(HOSTILE, "offline")] == 1
    assert families["herd_queue_depth"][0].value == 3
    assert families["herd_queue_depth"][0].labels == {"node": "alpha", "model": "llama3.2:3b"}
    assert families["herd_queue_limit"][0].value == 4
    assert families["herd_queue_estimated_wait_seconds"] == []  # no history yet
    assert families["herd_holding_queue_depth"][0].value == 1
    assert families["herd_trace_store_failed"][0].value == 2
    assert families["herd_trace_store_queued"][0].value == 5
    findings = {s.labels["severity"]: s.value for s in families["herd_health_findings"]}
    assert findings == {"info": 0, "warning": 1, "critical": 1}
    # a router without a trace store says nothing about one
    families = parse(Metrics().render(health_snapshot(), report))
    assert not [name for name in families if name.startswith("herd_trace_store")]
