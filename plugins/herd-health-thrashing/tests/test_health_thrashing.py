import time

import herd_health_thrashing

from herd_kernel.testing import (
    health_snapshot,
    heartbeat_payload,
    make_config,
    make_host,
    tally_window,
)

NOW = time.time()


def check(env=None):
    host = make_host("health-thrashing")
    [registered] = host.health_checks(make_config(host, env or {}))
    return registered


def churn(loads, unloads, *, cold=0, events=(), **beat):
    return health_snapshot(
        heartbeat_payload("n1", **beat), now=NOW, events=events,
        hour=tally_window(by_node={"n1": {"requests": 40, "cold_loads": cold}},
                          node_events={"n1": {"model_loaded": loads, "model_unloaded": unloads}}))


def loaded(model, ago, node="n1"):
    return {"kind": "model_loaded", "timestamp": NOW - ago, "node_id": node, "model": model}


def test_registered_through_the_entry_point_with_its_settings():
    host = make_host("health-thrashing")
    assert [p.name for p in host.loaded] == ["health-thrashing"]
    assert {s.env for s in host.settings()} == {s.env for s in herd_health_thrashing.SETTINGS}
    assert check().id == "model_thrashing"


def test_an_idle_fleet_and_ordinary_loading_are_silent():
    assert check().evaluate(health_snapshot(heartbeat_payload("n1", loaded=["qwen3:8b"]))) == []
    assert check().evaluate(churn(3, 2)) == []  # a morning's work, keep-alive doing its job
    assert check().evaluate(churn(9, 0)) == []  # a node filling its memory is not thrashing


def test_cold_requests_alone_are_not_thrashing():
    # an engine that does not report its loaded models makes every request look cold
    assert check().evaluate(churn(0, 0, cold=40)) == []


def test_a_node_swapping_models_warns_with_the_counts():
    events = [loaded("qwen3:8b", 100), loaded("qwen3:8b", 900), loaded("qwen3:8b", 1500),
              loaded("llama3.2:3b", 300), loaded("gemma3:4b", 5000), loaded("qwen3:8b", 60, "n2")]
    [finding] = check().evaluate(churn(9, 7, cold=12, events=events, loaded=["qwen3:8b"]))
    assert (finding.check_id, finding.severity, finding.node_id) == ("model_thrashing", "warning",
                                                                     "n1")
    assert "loaded a model 9 times and unloaded one 7 times in the last hour: 7 swaps" \
        in finding.detail
    assert "warns from 6" in finding.detail
    assert "12 of the requests it answered waited for a model to load" in finding.detail
    assert "Loaded most: qwen3:8b (3), llama3.2:3b (1)." in finding.detail
    assert "It holds 1 model now; its memory pressure is normal." in finding.detail
    assert "OLLAMA_KEEP_ALIVE" in finding.advice and "OLLAMA_MAX_LOADED_MODELS" in finding.advice
    assert finding.data["loads"] == 9 and finding.data["unloads"] == 7


def test_under_memory_pressure_the_advice_is_memory_not_keep_alive():
    memory = {"total_gb": 16.0, "used_gb": 14.0, "available_gb": 2.0, "pressure": "warn"}
    [finding] = check().evaluate(churn(8, 8, memory=memory))
    assert "memory pressure is warn" in finding.detail
    assert "more memory" in finding.advice and "will not help" in finding.advice


def test_the_threshold_comes_from_the_setting():
    assert check({"FLEET_HEALTH_THRASHING_SWAPS": "3"}).evaluate(churn(3, 2)) == []
    assert len(check({"FLEET_HEALTH_THRASHING_SWAPS": "2"}).evaluate(churn(3, 2))) == 1
    assert check({"FLEET_HEALTH_THRASHING_SWAPS": "8"}).evaluate(churn(9, 7)) == []
