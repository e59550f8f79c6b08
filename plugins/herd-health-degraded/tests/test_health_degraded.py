import attrs
import herd_health_degraded

from herd_kernel.testing import health_snapshot, heartbeat_payload, make_config, make_host


def check(env=None):
    host = make_host("health-degraded")
    [registered] = host.health_checks(make_config(host, env))
    return registered


def with_engines(node_id, *healthy, **extra):
    """A heartbeat whose node runs one engine per entry of ``healthy``, answering or not."""
    beat = heartbeat_payload(node_id, **extra)
    [engine] = beat["endpoints"]
    beat["endpoints"] = [{**engine, "url": f"http://127.0.0.1:{11434 + i}", "healthy": ok}
                         for i, ok in enumerate(healthy)]
    return beat


def test_registers_through_its_entry_point():
    registered = check()
    assert isinstance(registered, herd_health_degraded.DegradedCheck)
    assert (registered.id, registered.title) == ("node_degraded", "Nodes degraded")


def test_a_fleet_whose_nodes_report_on_time_is_silent():
    snap = health_snapshot(heartbeat_payload("n1", loaded=["llama3.2:3b"]), heartbeat_payload("n2"))
    assert check().evaluate(snap) == []


def test_offline_nodes_are_left_to_the_offline_check():
    snap = health_snapshot(with_engines("n1", False), status={"n1": "offline"})
    assert check().evaluate(snap) == []


def test_late_heartbeats_warn_with_the_silence_and_the_thresholds():
    snap = health_snapshot(heartbeat_payload("n1"), heartbeat_payload("n2"),
                           status={"n2": "degraded"})
    nodes = [{**n, "last_heartbeat_s_ago": 21.4} if n["node_id"] == "n2" else n
             for n in snap.status["nodes"]]
    snap = attrs.evolve(snap, status={**snap.status, "nodes": nodes})
    [finding] = check().evaluate(snap)
    assert (finding.check_id, finding.severity, finding.node_id) == ("node_degraded", "warning", "n2")
    assert finding.title == "n2's heartbeats are late"
    assert "for 21 s" in finding.detail
    assert "degraded after 15 s" in finding.detail and "offline after 30 s" in finding.detail
    assert "CPU 5% busy" in finding.detail
    assert "FLEET_HEARTBEAT_TIMEOUT" in finding.advice
    assert finding.data["last_heartbeat_s_ago"] == 21.4


def test_the_thresholds_it_quotes_are_the_routers_settings():
    snap = health_snapshot(heartbeat_payload("n1"), status={"n1": "degraded"})
    [finding] = check({"FLEET_HEARTBEAT_TIMEOUT": "40", "FLEET_HEARTBEAT_OFFLINE": "90"}
                      ).evaluate(snap)
    assert "degraded after 40 s" in finding.detail and "offline after 90 s" in finding.detail


def test_a_node_none_of_whose_engines_answers_warns_naming_them():
    snap = health_snapshot(heartbeat_payload("n1"), with_engines("n2", False, False))
    [finding] = check().evaluate(snap)
    assert (finding.severity, finding.node_id, finding.title) == (
        "warning", "n2", "No engine answers on n2")
    assert "ollama at http://127.0.0.1:11434, ollama at http://127.0.0.1:11435" in finding.detail
    assert "ollama serve" in finding.advice
    assert len(finding.data["endpoints"]) == 2


def test_one_engine_answering_is_enough_and_a_paused_node_is_left_alone():
    snap = health_snapshot(with_engines("n1", False, True), with_engines("n2", False, paused=True))
    assert check().evaluate(snap) == []
