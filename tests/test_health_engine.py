"""The health engine without a server: rolling tallies under an injected clock, how each trace is
counted, checks that crash, the score, the snapshot cache, and the registry's model load events."""

from __future__ import annotations

import pytest
from pluggy import HookimplMarker

from herd_kernel.api import Finding, Tally
from herd_kernel.fleet import Fleet
from herd_kernel.health import MAX_KEYS, OTHER, HealthEngine, Tallies, classify, score
from herd_kernel.models import Attempt, Heartbeat, Trace, structure
from herd_kernel.plugins import PluginHost
from herd_kernel.testing import heartbeat_payload, make_config

hookimpl = HookimplMarker("herd")


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def trace(status: str = "completed", *, node: str | None = "n1", model: str = "llama3.2:3b",
          **fields) -> Trace:
    return Trace(request_id="r", timestamp=0.0, model=model, api="ollama", path="/api/chat",
                 node_id=node, status=status, http_status=200, latency_ms=100.0, **fields)


def counted(t: Trace) -> Tally:
    tally = Tally()
    for name, value in classify(t).items():
        setattr(tally, name, value)
    return tally


# --- classification ------------------------------------------------------------------------------


@pytest.mark.parametrize("status,field", [
    ("completed", "completed"), ("failed", "failed"), ("rejected", "rejected"),
    ("client_disconnected", "client_disconnects"),
    ("reaped", "failed"), ("ended", "failed"),  # the pipeline's own endings of a stream
])
def test_each_status_counts_once_in_requests_and_once_in_its_kind(status, field):
    tally = counted(trace(status))
    kinds = ("completed", "failed", "rejected", "client_disconnects")
    assert tally.requests == 1
    assert {k: getattr(tally, k) for k in kinds} == {k: int(k == field) for k in kinds}


def test_a_stream_that_failed_after_its_first_byte_is_an_incomplete_stream():
    assert counted(trace("failed", stream=True, ttft_ms=40.0)).incomplete_streams == 1
    assert counted(trace("reaped", stream=True, ttft_ms=40.0)).incomplete_streams == 1
    # failed before anything reached the client, or not a stream, or the client left
    assert counted(trace("failed", stream=True)).incomplete_streams == 0
    assert counted(trace("failed", stream=False, ttft_ms=40.0)).incomplete_streams == 0
    assert counted(trace("client_disconnected", stream=True, ttft_ms=9.0)).incomplete_streams == 0


def test_timeouts_retries_fallbacks_and_cold_loads_come_from_the_trace():
    tally = counted(trace(retries=2, details={"timeout": True, "cold": True},
                          model="qwen2.5:7b", original_model="llama3.2:3b"))
    assert (tally.timeouts, tally.retried, tally.retries) == (1, 1, 2)
    # every node failed: the trace counts both failed attempts, one of which was a retry
    failed = [Attempt(node_id=n, outcome="HTTP 500", status=500) for n in ("a", "b")]
    both = counted(trace("failed", node=None, retries=2, attempts=tuple(failed)))
    assert (both.retried, both.retries) == (1, 1)
    one = (*failed[:1], Attempt(node_id="b", outcome="completed", status=200))
    assert counted(trace(retries=1, attempts=one)).retries == 1
    assert counted(trace(attempts=one[1:])).retried == 0
    assert (tally.fallbacks, tally.cold_loads) == (1, 1)
    plain = counted(trace(model="llama3.2", original_model="Llama3.2:latest"))  # same model
    assert (plain.timeouts, plain.retried, plain.fallbacks, plain.cold_loads) == (0, 0, 0, 0)
    # a cold node that failed is not a cold load; a request no node took is no fallback
    assert counted(trace("failed", details={"cold": True})).cold_loads == 0
    assert counted(trace("rejected", node=None, model="b", original_model="a")).fallbacks == 0


def test_a_node_whose_attempt_failed_counts_it_even_when_another_node_rescued_the_request():
    tallies = Tallies(Clock())
    attempts = (Attempt(node_id="n1", outcome="read timed out", status=None),
                Attempt(node_id="n2", outcome="completed", status=200))
    tallies.record(trace("completed", node="n2", attempts=attempts, retries=1,
                         details={"timeout": True, "timeout_nodes": ["n1"]}))
    hour, _day = tallies.windows()
    n1, n2, total = hour.by_node["n1"], hour.by_node["n2"], hour.total
    assert (n1.requests, n1.failed, n1.retried, n1.timeouts, n1.completed) == (1, 1, 1, 1, 0)
    assert (n2.requests, n2.completed, n2.failed, n2.retried, n2.timeouts) == (1, 1, 0, 0, 0)
    assert (total.requests, total.completed, total.failed, total.retried, total.timeouts) == \
        (1, 1, 0, 1, 1)


def test_a_request_every_node_failed_is_a_failure_of_each():
    tallies = Tallies(Clock())
    attempts = (Attempt(node_id="n1", outcome="502", status=502),
                Attempt(node_id="n2", outcome="502", status=502))
    tallies.record(trace("failed", node=None, attempts=attempts, retries=2))
    hour, _day = tallies.windows()
    assert [(k, t.requests, t.failed) for k, t in sorted(hour.by_node.items())] == \
        [("n1", 1, 1), ("n2", 1, 1)]
    assert (hour.total.requests, hour.total.failed) == (1, 1)


def test_ttft_latency_and_tokens_are_summed():
    tally = counted(trace(ttft_ms=30.0, prompt_tokens=7, completion_tokens=11))
    assert (tally.ttft_ms_sum, tally.ttft_count, tally.latency_ms_sum) == (30.0, 1, 100.0)
    assert (tally.prompt_tokens, tally.completion_tokens) == (7, 11)
    assert counted(trace()).ttft_count == 0


# --- rolling windows -----------------------------------------------------------------------------


def test_a_request_leaves_the_hour_after_an_hour_and_the_day_after_a_day():
    clock = Clock()
    tallies = Tallies(clock)
    tallies.record(trace("failed", node="n1"))
    tallies.event("prewarm", node_id="n1")
    clock.now += 30 * 60
    tallies.record(trace(node="n2", model="qwen2.5:7b"))
    hour, day = tallies.windows()
    assert (hour.total.requests, hour.total.failed, day.total.requests) == (2, 1, 2)
    assert set(hour.by_node) == {"n1", "n2"} and set(hour.by_model) == {"llama3.2:3b",
                                                                     "qwen2.5:7b"}
    assert hour.events == {"prewarm": 1} and hour.node_events == {"n1": {"prewarm": 1}}
    assert (hour.seconds, day.seconds) == (3600, 86400)

    clock.now += 31 * 60  # the first minute is over an hour old now
    hour, day = tallies.windows()
    assert (hour.total.requests, hour.total.failed) == (1, 0)
    assert set(hour.by_node) == {"n2"} and hour.events == {} and hour.node_events == {}
    assert (day.total.requests, day.total.failed, day.events) == (2, 1, {"prewarm": 1})

    clock.now += 24 * 3600  # everything is over a day old
    hour, day = tallies.windows()
    assert day.total == Tally() and day.by_node == {} and day.by_model == {}
    assert not tallies._in_day and not tallies._in_hour  # no bucket is kept past its day


def test_minutes_are_summed_once_and_taken_away_once():
    clock = Clock()
    tallies = Tallies(clock)
    for minute in range(90):
        tallies.record(trace(ttft_ms=10.0, stream=True))
        clock.now += 60
    hour, day = tallies.windows()
    assert (hour.total.requests, hour.total.ttft_count) == (59, 59)  # this minute's is empty
    assert hour.total.ttft_ms_sum == pytest.approx(590.0)
    assert day.total.requests == 90 and day.by_node["n1"].requests == 90
    assert len(tallies._in_hour) == 59 and len(tallies._in_day) == 90


def test_windows_are_copies_a_check_cannot_change():
    tallies = Tallies(Clock())
    tallies.record(trace())
    hour, _day = tallies.windows()
    hour.total.requests = 999
    hour.by_node["n1"].failed = 5
    again, _ = tallies.windows()
    assert (again.total.requests, again.by_node["n1"].failed) == (1, 0)


def test_distinct_models_are_bounded():
    clock = Clock()
    tallies = Tallies(clock)
    for i in range(MAX_KEYS + 50):
        tallies.record(trace("rejected", node=None, model=f"junk-{i}"))
        if i % 40 == 0:
            clock.now += 60  # spread over minutes: the bound holds across closed ones too
    _hour, day = tallies.windows()
    assert len(day.by_model) == MAX_KEYS + 1
    assert day.by_model[OTHER].requests == 50
    assert day.total.requests == MAX_KEYS + 50


def test_models_seen_every_minute_count_once_towards_the_bound():
    clock = Clock()
    tallies = Tallies(clock)
    models = [f"m{i}" for i in range(MAX_KEYS)]
    for _minute in range(3):
        for model in models:
            tallies.record(trace(model=model))
        clock.now += 60
    _hour, day = tallies.windows()
    assert OTHER not in day.by_model and len(day.by_model) == MAX_KEYS
    assert all(tally.requests == 3 for tally in day.by_model.values())


def test_a_clock_set_back_keeps_counting_in_the_open_minute():
    clock = Clock()
    tallies = Tallies(clock)
    tallies.record(trace())
    clock.now -= 3600
    tallies.record(trace())
    assert tallies.windows()[0].total.requests == 2


# --- the engine ----------------------------------------------------------------------------------


class Check:
    def __init__(self, id: str, findings=(), error: Exception | None = None) -> None:
        self.id, self.title = id, id
        self.findings, self.error = list(findings), error
        self.calls = 0
        self.seen = None

    def evaluate(self, snapshot):
        self.calls += 1
        self.seen = snapshot
        if self.error is not None:
            raise self.error
        return self.findings


def finding(check_id: str, severity: str, node: str | None = None) -> Finding:
    return Finding(check_id=check_id, severity=severity, title=f"{check_id} {severity}",
                   detail="numbers", advice="do this", node_id=node)


STATUS = {"fleet": {"nodes_total": 3, "nodes_online": 2, "nodes_degraded": 0,
                    "nodes_offline": 1, "nodes_pending": 0}, "nodes": [],
          "trace_store": {"written": 5, "dropped": 1, "failed": 0, "queued": 2}}


def engine(*checks, clock=None, cache_s: float = 0.0, events=()) -> HealthEngine:
    return HealthEngine([(f"plugin-{c.id}", c) for c in checks], status=lambda: STATUS,
                        events=lambda: tuple(events), cache_s=cache_s, clock=clock or Clock())


def test_a_quiet_fleet_scores_100_and_info_costs_nothing():
    report = engine(Check("quiet"), Check("notes", [finding("notes", "info")])).report()
    assert report["score"] == 100
    assert [c["severity"] for c in report["checks"]] == ["info"]
    assert report["checks_run"] == 2


def test_the_score_and_the_order_of_findings():
    report = engine(
        Check("a", [finding("a", "info"), finding("a", "warning", "n2")]),
        Check("b", [finding("b", "critical")]),
        Check("c", [finding("c", "warning", node) for node in ("n1", "n2", "n3", "n4", "n5",
                                                               "n6")]),
    ).report()
    assert [(c["check_id"], c["severity"]) for c in report["checks"][:3]] == [
        ("b", "critical"), ("a", "warning"), ("c", "warning")]
    assert report["checks"][-1]["severity"] == "info"
    # a: 10, b: 25, c: 60 capped at 50
    assert report["score"] == 100 - 10 - 25 - 50
    assert score([finding("x", "critical")] * 5) == 50
    assert score([finding(str(i), "critical") for i in range(5)]) == 0
    first = report["checks"][1]
    assert first == {"check_id": "a", "severity": "warning", "title": "a warning",
                     "description": "numbers", "fix": "do this", "node_id": "n2", "data": {}}


def test_a_check_that_raises_becomes_a_finding_naming_its_plugin(caplog):
    broken = Check("broken", error=KeyError("nodes"))
    fine = Check("fine", [finding("fine", "info")])
    report = engine(broken, fine).report()
    crashed = [c for c in report["checks"] if c["check_id"] == "check_crashed"]
    assert len(crashed) == 1 and crashed[0]["severity"] == "warning"
    assert "plugin-broken" in crashed[0]["title"] and "'broken'" in crashed[0]["title"]
    assert crashed[0]["description"] == "KeyError: 'nodes'"
    assert crashed[0]["data"] == {"plugin": "plugin-broken", "check": "broken"}
    assert any(c["check_id"] == "fine" for c in report["checks"])  # the others still ran
    assert report["score"] == 90


def test_a_check_that_returns_something_else_is_a_crash_too():
    report = engine(Check("odd", ["not a finding"])).report()
    [crashed] = report["checks"]
    assert crashed["check_id"] == "check_crashed" and "str" in crashed["description"]


def test_checks_get_the_status_tallies_events_and_store_counters():
    check = Check("look")
    clock = Clock()
    health = engine(check, clock=clock, events=[{"kind": "prewarm", "node_id": "n1"}])
    health.record(trace("failed", retries=1, details={"timeout": True}))
    health.event("fallback", {"node_id": "n2", "model": "m"})
    report = health.report()
    snap = check.seen
    assert snap.status is STATUS and snap.now == clock.now
    assert snap.hour.total.failed == 1 and snap.day.by_node["n1"].timeouts == 1
    assert snap.hour.node_events == {"n2": {"fallback": 1}}
    assert snap.events == ({"kind": "prewarm", "node_id": "n1"},)
    assert snap.trace_store == {"written": 5, "dropped": 1, "failed": 0, "queued": 2}
    assert report["vitals"] == {
        "nodes_total": 3, "nodes_online": 2, "nodes_degraded": 0, "nodes_offline": 1,
        "nodes_pending": 0, "error_rate_pct": 100.0, "cold_loads_24h": 0, "avg_ttft_ms": None,
        "requests_24h": 1, "retries_24h": 1, "client_disconnects_24h": 0,
        "incomplete_streams_24h": 0, "timeouts_24h": 1}
    assert report["generated_at"] == clock.now


def test_the_report_is_reused_for_the_cache_time_then_built_again():
    check = Check("counted")
    clock = Clock()
    health = engine(check, clock=clock, cache_s=5.0)
    first = health.report()
    health.record(trace())
    clock.now += 4.9
    assert health.report() is first and health.snapshot() is check.seen and check.calls == 1
    clock.now += 0.2
    second = health.report()
    assert check.calls == 2 and second["vitals"]["requests_24h"] == 1


def test_the_plugin_host_names_the_plugin_of_each_check():
    class HasCheck:
        @hookimpl
        def herd_health_checks(self, config):
            return [Check("mine")]

    host = PluginHost(load_entry_points=False)
    host.register(HasCheck())
    [(plugin, check)] = host.named_health_checks(make_config(host))
    assert plugin == "HasCheck" and check.id == "mine"
    assert [c.id for c in host.health_checks(make_config(host))] == ["mine"]


# --- model load events from heartbeats ------------------------------------------------------------


def beat(node: str, loaded=(), available=(), **extra) -> Heartbeat:
    return structure(heartbeat_payload(node, loaded=list(loaded), available=list(available),
                                       **extra), Heartbeat)


def test_the_registry_tells_of_models_loaded_and_unloaded_between_heartbeats():
    fleet = Fleet()
    seen: list[tuple[str, str, str]] = []
    fleet.model_listeners.append(lambda kind, node, model: seen.append((kind, node, model)))
    fleet.apply_heartbeat(beat("n1", loaded=["llama3.2:3b"], available=["qwen2.5:7b"]))
    assert seen == []  # what a node already holds at its first heartbeat is not a load
    fleet.apply_heartbeat(beat("n1", loaded=["llama3.2:3b"], available=["qwen2.5:7b"]))
    assert seen == []
    fleet.apply_heartbeat(beat("n1", loaded=["qwen2.5:7b"], available=["llama3.2:3b"]))
    assert seen == [("model_unloaded", "n1", "llama3.2:3b"),
                    ("model_loaded", "n1", "qwen2.5:7b")]
    # the router noting a load itself (a pre-warm, a request) does not hide it from the events
    fleet.add_loaded("n1", "llama3.2:3b")
    fleet.apply_heartbeat(beat("n1", loaded=["qwen2.5:7b", "llama3.2:3b"]))
    assert seen[-1] == ("model_loaded", "n1", "llama3.2:3b")
    # a node going away without endpoints keeps what it had: no unload is made up
    count = len(seen)
    fleet.apply_heartbeat(structure({**heartbeat_payload("n1"), "endpoints": [],
                                     "draining": True}, Heartbeat))
    assert len(seen) == count
    fleet.forget("n1")
    fleet.apply_heartbeat(beat("n1"))  # a first heartbeat again
    assert len(seen) == count


def test_load_events_reach_the_routing_events_and_the_tallies():
    from herd_kernel.app import Services

    host = PluginHost(load_entry_points=False)
    services = Services(make_config(host, {"FLEET_DATA_DIR": "/nonexistent"}), host)
    services.fleet.apply_heartbeat(beat("n1"), admission="local")
    services.fleet.apply_heartbeat(beat("n1", loaded=["llama3.2:3b"]), admission="local")
    assert [(e["kind"], e["node_id"], e["model"]) for e in services.events] == [
        ("model_loaded", "n1", "llama3.2:3b")]
    hour = services.health.snapshot().hour
    assert hour.events == {"model_loaded": 1} and hour.node_events == {
        "n1": {"model_loaded": 1}}
