import herd_health_kv_cache
import pytest

from herd_kernel.config import SettingError
from herd_kernel.testing import health_snapshot, heartbeat_payload, make_config, make_host

GB = 1024**3


def check(env=None):
    host = make_host("health-kv-cache")
    [registered] = host.health_checks(make_config(host, env))
    return registered


def node(node_id="n1", *, model="qwen2.5:7b", weights_gb=4.7, loaded_gb=14.2, context=32768,
         parallel=4, memory_gb=32.0, pressure="normal"):
    """A node whose engine has ``model`` on disk at ``weights_gb`` and loaded at ``loaded_gb``."""
    memory = {"total_gb": memory_gb, "used_gb": loaded_gb + 2, "pressure": pressure,
              "available_gb": memory_gb - loaded_gb - 2}
    beat = heartbeat_payload(node_id, memory_gb=memory_gb, memory=memory,
                             available=[{"name": model, "size_bytes": int(weights_gb * GB)}])
    beat["endpoints"][0].update(num_parallel=parallel, models_loaded=[
        {"name": model, "size_bytes": int(loaded_gb * GB), "context_length": context}])
    return beat


def test_registers_through_its_entry_point():
    registered = check()
    assert isinstance(registered, herd_health_kv_cache.KvCacheCheck)
    assert registered.id == "kv_cache_bloat"


def test_models_loaded_with_a_modest_context_are_silent():
    snap = health_snapshot(
        node("n1", model="llama3.1:8b", weights_gb=4.9, loaded_gb=5.6, context=4096, parallel=1),
        # a big model with a big cache in absolute terms, but small beside its weights
        node("n2", model="llama3.3:70b", weights_gb=42.5, loaded_gb=46.0, memory_gb=128.0),
        heartbeat_payload("n3", loaded=["phi4"]))  # sizes unknown: nothing to say
    assert check().evaluate(snap) == []


def test_a_cache_taking_a_large_share_of_the_node_warns_with_the_numbers():
    [finding] = check().evaluate(health_snapshot(node()))
    assert (finding.check_id, finding.severity, finding.node_id) == ("kv_cache_bloat", "warning", "n1")
    assert finding.title == "qwen2.5:7b on n1: 9.5 GB of context cache"
    assert ("qwen2.5:7b on n1 holds 14.2 GB loaded for 4.7 GB of weights: 9.5 GB (67% of it, "
            "30% of n1's 32 GB) is context cache, sized by num_ctx 32768 x 4 parallel slots "
            "(OLLAMA_NUM_PARALLEL).") == finding.detail
    assert "lower OLLAMA_NUM_PARALLEL on n1 (now 4)" in finding.advice
    assert "smaller num_ctx for qwen2.5:7b (loaded with 32768)" in finding.advice
    assert finding.data["cache_gb"] == pytest.approx(9.5, abs=0.01)


def test_a_cache_large_beside_the_model_only_is_information_until_memory_is_short():
    roomy = node(model="llama3.2:3b", weights_gb=2.0, loaded_gb=6.0, parallel=1, memory_gb=128.0)
    [finding] = check().evaluate(health_snapshot(roomy))
    assert finding.severity == "info"
    assert "4.0 GB (67% of it, 3% of n1's 128 GB)" in finding.detail
    assert "sized by num_ctx 32768." in finding.detail  # one slot: parallelism not blamed
    assert "OLLAMA_NUM_PARALLEL" not in finding.advice
    strained = node(model="llama3.2:3b", weights_gb=2.0, loaded_gb=6.0, parallel=1,
                    memory_gb=128.0, pressure="warn")
    [finding] = check().evaluate(health_snapshot(strained))
    assert finding.severity == "warning" and "memory pressure 'warn'" in finding.detail


def test_offline_nodes_are_not_judged():
    assert check().evaluate(health_snapshot(node(), status={"n1": "offline"})) == []


def test_thresholds_are_settings():
    snap = health_snapshot(node())
    assert check({"FLEET_HEALTH_KV_CACHE_MIN_GB": "10"}).evaluate(snap) == []
    [finding] = check({"FLEET_HEALTH_KV_CACHE_NODE_SHARE": "0.5"}).evaluate(snap)
    assert finding.severity == "info"  # 30% of the node is now under the bar, 67% of the model not
    assert check({"FLEET_HEALTH_KV_CACHE_NODE_SHARE": "0.5",
                  "FLEET_HEALTH_KV_CACHE_MODEL_SHARE": "0.7"}).evaluate(snap) == []
    with pytest.raises(SettingError, match="FLEET_HEALTH_KV_CACHE_MODEL_SHARE"):
        check({"FLEET_HEALTH_KV_CACHE_MODEL_SHARE": "1.5"})
