import attrs
import herd_health_offline

from herd_kernel.testing import (
    health_snapshot,
    heartbeat_payload,
    make_config,
    make_host,
    tally_window,
)

NOW = 1_750_000_000.0  # 2025-06-15 15:06:40 UTC


def check():
    host = make_host("health-offline")
    [registered] = host.health_checks(make_config(host))
    return registered


def silent_for(snapshot, node_id, seconds):
    """The snapshot as the router shows it once ``node_id`` has been silent ``seconds``."""
    nodes = [{**n, "last_heartbeat_s_ago": seconds} if n["node_id"] == node_id else n
             for n in snapshot.status["nodes"]]
    return attrs.evolve(snapshot, status={**snapshot.status, "nodes": nodes})


def test_registers_through_its_entry_point():
    registered = check()
    assert isinstance(registered, herd_health_offline.OfflineCheck)
    assert (registered.id, registered.title) == ("node_offline", "Nodes offline")


def test_an_online_fleet_is_silent():
    snap = health_snapshot(heartbeat_payload("n1", loaded=["llama3.2:3b"]),
                           heartbeat_payload("n2"), now=NOW)
    assert check().evaluate(snap) == []


def test_degraded_and_pending_nodes_are_not_offline():
    snap = health_snapshot(heartbeat_payload("n1"), heartbeat_payload("n2"),
                           status={"n2": "degraded"}, now=NOW)
    pending = {"node_id": "stranger", "status": "pending", "admission": "pending",
               "last_heartbeat_s_ago": 900.0, "endpoints": []}
    snap = attrs.evolve(snap, status={**snap.status, "nodes": [*snap.status["nodes"], pending]})
    assert check().evaluate(snap) == []


def test_an_offline_node_is_critical_and_says_when_it_was_last_seen():
    snap = health_snapshot(heartbeat_payload("n1"), heartbeat_payload("n2"),
                           status={"n2": "offline"}, now=NOW)
    [finding] = check().evaluate(silent_for(snap, "n2", 754))
    assert (finding.check_id, finding.severity, finding.node_id) == ("node_offline", "critical", "n2")
    assert finding.title == "n2 is offline"
    assert "for 12 min" in finding.detail
    assert "last seen 2025-06-15 14:54 UTC" in finding.detail
    assert "herd-node" in finding.advice
    assert finding.data["last_seen_s_ago"] == 754
    assert finding.data["last_seen_at"] == NOW - 754


def test_long_silences_read_in_hours_and_days():
    assert herd_health_offline.age(3 * 3600 + 5 * 60) == "3 h 05 min"
    assert herd_health_offline.age(3 * 86400 + 7200) == "3 d 2 h"
    assert herd_health_offline.age(9.7) == "9 s"


def test_names_the_models_no_online_node_can_serve_and_the_traffic_it_had():
    snap = health_snapshot(
        heartbeat_payload("n1", available=["llama3.2:3b"]),
        heartbeat_payload("n2", available=["llama3.2:3b", "qwen2.5:32b", "phi4"]),
        status={"n2": "offline"}, now=NOW,
        hour=tally_window(by_node={"n2": {"requests": 41, "completed": 41}}))
    [finding] = check().evaluate(snap)
    assert "No online node has phi4:latest, qwen2.5:32b" in finding.detail
    assert "llama3.2:3b" not in finding.detail  # n1 still serves it
    assert "served 41 requests in the last hour" in finding.detail
    assert finding.data["only_here"] == ["phi4:latest", "qwen2.5:32b"]


def test_a_long_list_of_stranded_models_is_cut_short():
    models = [f"m{i}:1b" for i in range(8)]
    snap = health_snapshot(heartbeat_payload("n1"), heartbeat_payload("n2", available=models),
                           status={"n2": "offline"}, now=NOW)
    [finding] = check().evaluate(snap)
    assert "m4:1b and 3 more" in finding.detail and "m5:1b" not in finding.detail


def test_a_node_that_said_it_was_stopping_is_only_information():
    snap = health_snapshot(heartbeat_payload("n1"), heartbeat_payload("n2", draining=True),
                           now=NOW)
    assert snap.status["nodes"][1]["status"] == "offline"  # a draining node takes no work
    [finding] = check().evaluate(silent_for(snap, "n2", 300))
    assert (finding.severity, finding.title) == ("info", "n2 was stopped")
    assert "5 min ago" in finding.detail and finding.data["draining"] is True


def test_every_offline_node_gets_its_own_finding():
    snap = health_snapshot(*(heartbeat_payload(f"n{i}") for i in range(3)),
                           status={"n0": "offline", "n2": "offline"}, now=NOW)
    assert [f.node_id for f in check().evaluate(snap)] == ["n0", "n2"]
