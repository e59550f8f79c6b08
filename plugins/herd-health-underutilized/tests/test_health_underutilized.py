import attrs
import herd_health_underutilized
import pytest

from herd_kernel.config import SettingError
from herd_kernel.testing import (
    health_snapshot,
    heartbeat_payload,
    make_config,
    make_host,
    tally_window,
)

GB = 1024**3
QWEN = {"name": "qwen2.5:14b", "size_bytes": 9 * GB}


def check(env=None):
    host = make_host("health-underutilized")
    [registered] = host.health_checks(make_config(host, env))
    return registered


def fleet(*, big=None, hour=None, **small):
    """``small`` (8 GB, busy) holds qwen2.5:14b on disk and loads it cold; ``big`` (64 GB) is
    the node with room."""
    return health_snapshot(
        heartbeat_payload("small", memory_gb=8.0, available=[QWEN], **small),
        heartbeat_payload("big", memory_gb=64.0, **(big if big is not None else
                                                    {"available": [QWEN]})),
        hour=hour)


def cold_on_small(loads=6, requests=40):
    return tally_window(by_node={"small": {"requests": requests, "completed": requests,
                                           "cold_loads": loads},
                                 "big": {"requests": 2, "completed": 2}},
                        by_model={"qwen2.5:14b": {"requests": requests, "cold_loads": loads}})


def with_queue(snapshot, **pending):
    lanes = {f"{node}:qwen2.5:14b": {"node": node, "model": "qwen2.5:14b", "limit": 1,
                                     "in_flight": 1, "pending": n} for node, n in pending.items()}
    return attrs.evolve(snapshot, status={**snapshot.status, "queues": lanes})


def test_registers_through_its_entry_point():
    registered = check()
    assert isinstance(registered, herd_health_underutilized.UnderutilizedCheck)
    assert registered.id == "underutilized_memory"


def test_an_idle_fleet_with_free_memory_is_silent():
    # the reference's noise: free memory with no demand is not a finding
    assert check().evaluate(fleet()) == []


def test_a_busy_fleet_that_needs_no_cold_loads_is_silent():
    busy = tally_window(by_node={"small": {"requests": 300, "completed": 300}},
                        by_model={"qwen2.5:14b": {"requests": 300, "completed": 300}})
    assert check().evaluate(fleet(hour=busy)) == []


def test_cold_loads_elsewhere_of_a_model_that_fits_are_information_with_the_numbers():
    [finding] = check().evaluate(fleet(hour=cold_on_small()))
    assert (finding.check_id, finding.severity, finding.node_id) == (
        "underutilized_memory", "info", "big")
    assert "big has 60.0 GB of memory available" in finding.detail
    assert "qwen2.5:14b (9.0 GB): cold-loaded 6 times on other nodes in the last hour" \
        in finding.detail
    assert "big served 2 of 42 requests in the last hour" in finding.detail
    assert finding.advice.startswith("Keep qwen2.5:14b loaded on big (OLLAMA_KEEP_ALIVE")
    assert finding.data["models"][0]["on_disk"] is True


def test_a_model_the_roomy_node_lacks_is_to_be_pulled_first():
    [finding] = check().evaluate(fleet(big={}, hour=cold_on_small()))
    assert finding.advice.startswith("Pull qwen2.5:14b onto big (`ollama pull NAME` there), "
                                     "then keep qwen2.5:14b loaded on big")


def test_a_node_without_ollama_is_not_told_to_pull():
    assert check().evaluate(fleet(big={"kind": "openai"}, hour=cold_on_small())) == []


def test_cold_loads_the_node_did_itself_are_not_demand_elsewhere():
    hour = tally_window(by_node={"big": {"requests": 6, "cold_loads": 6}},
                        by_model={"qwen2.5:14b": {"requests": 6, "cold_loads": 6}})
    assert check().evaluate(fleet(hour=hour)) == []


def test_requests_queued_on_other_nodes_are_demand_too():
    snap = with_queue(fleet(), small=3)
    [finding] = check().evaluate(snap)
    assert "3 requests waiting in other nodes' queues" in finding.detail
    assert finding.data["models"][0]["waiting_elsewhere"] == 3
    # its own queue is not demand it misses, and one waiting request is below the threshold
    assert check().evaluate(with_queue(fleet(), big=5, small=1)) == []


def test_nothing_when_the_model_is_loaded_there_does_not_fit_or_the_node_is_strained():
    hour = cold_on_small()
    assert check().evaluate(fleet(big={"loaded": [QWEN]}, hour=hour)) == []
    assert check().evaluate(fleet(big={"available": [{**QWEN, "size_bytes": 70 * GB}]},
                                  hour=hour)) == []
    strained = {"total_gb": 64.0, "used_gb": 20.0, "available_gb": 44.0, "pressure": "warn"}
    assert check().evaluate(fleet(big={"available": [QWEN], "memory": strained}, hour=hour)) == []
    assert check().evaluate(fleet(big={"available": [QWEN], "paused": True}, hour=hour)) == []


def test_a_model_of_unknown_size_is_never_said_to_fit():
    hour = cold_on_small()
    snap = health_snapshot(heartbeat_payload("small", memory_gb=8.0, available=["qwen2.5:14b"]),
                           heartbeat_payload("big", memory_gb=64.0), hour=hour)
    assert check().evaluate(snap) == []


def test_thresholds_are_settings():
    few = cold_on_small(loads=2)
    assert check().evaluate(fleet(hour=few)) == []
    assert len(check({"FLEET_HEALTH_UNDERUTILIZED_MIN_COLD_LOADS": "2"}).evaluate(
        fleet(hour=few))) == 1
    assert check({"FLEET_HEALTH_UNDERUTILIZED_FREE_GB": "61"}).evaluate(
        fleet(hour=cold_on_small())) == []
    assert len(check({"FLEET_HEALTH_UNDERUTILIZED_MIN_WAITING": "1"}).evaluate(
        with_queue(fleet(), small=1))) == 1
    with pytest.raises(SettingError, match="MIN_COLD_LOADS"):
        check({"FLEET_HEALTH_UNDERUTILIZED_MIN_COLD_LOADS": "0"})
