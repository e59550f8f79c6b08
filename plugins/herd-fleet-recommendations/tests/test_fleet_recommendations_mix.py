"""The mix rules with no server: a real registry and the real ``/fleet/status`` view behind each
snapshot (``health_snapshot``), the last day's requests as counts (``tally_window``)."""

from __future__ import annotations

import re

import pytest
from herd_fleet_recommendations import _policy
from herd_fleet_recommendations.catalogue import CARDS, CATALOGUE, DEFAULT_NUM_CTX, card_for
from herd_fleet_recommendations.mix import Policy, recommend

from herd_kernel.config import SettingError
from herd_kernel.models import normalize_model
from herd_kernel.testing import (
    health_snapshot,
    heartbeat_payload,
    make_config,
    make_host,
    tally_window,
)

GB = 1024**3


def day(**by_model: dict[str, int]) -> object:
    total = {"requests": sum(t.get("requests", 0) for t in by_model.values()),
             "rejected": sum(t.get("rejected", 0) for t in by_model.values())}
    return tally_window(86400, total=total, by_model=by_model)


def beat(node_id: str, memory_gb: float, *, loaded=(), available=(), port: int = 11434,
         **extra):
    return heartbeat_payload(node_id, memory_gb=memory_gb, url=f"http://127.0.0.1:{port}",
                             loaded=list(loaded), available=list(available), **extra)


def rows(body, action=None, node=None):
    return [r for r in body["recommendations"]
            if (action is None or r["action"] == action) and (node is None or r["node_id"] == node)]


def budgets(body):
    return {n["node_id"]: n["memory"]["budget_gb"] for n in body["nodes"]}


def assert_everything_suggested_fits(body):
    budget = budgets(body)
    for row in body["recommendations"]:
        if row["action"] in ("pull", "replace"):
            assert row["fits"] is True and row["memory_gb"] <= budget[row["node_id"]], row
            assert row["pull"] == {"method": "POST", "path": "/dashboard/api/pull",
                                   "body": {"model": row["model"], "node_id": row["node_id"]}}
            assert row["model"] in {c.name for c in CARDS}


# --- the table -------------------------------------------------------------------------------


def test_the_table_is_small_curated_and_spans_half_a_billion_to_seventy():
    assert 25 <= len(CARDS) <= 40
    params = [c.params_b for c in CARDS if c.use != "embedding"]
    assert min(params) <= 0.6 and 70 <= max(params) <= 71
    assert len(CATALOGUE) == len(CARDS), "a name twice"
    for card in CARDS:
        assert normalize_model(card.name) == card.name.lower(), card.name
        assert re.fullmatch(r"[a-z0-9.\-]+:[A-Za-z0-9._\-]+", card.name), card.name
        assert set(card.uses) <= {"chat", "code", "embedding", "vision", "reasoning"}
        assert card.size_gb > 0 and card.context >= 512
        # loaded it takes more than its weights: the KV cache at the default context, buffers
        assert card.size_gb < card.memory_gb < card.size_gb * 1.3 + 2.5, card.name
    # the KV cache, worked by hand for llama3.1:8b: 2 x 32 layers x 8 heads x 128 x 2 bytes
    assert card_for("llama3.1:8b").kv_gb == pytest.approx(
        2 * 32 * 8 * 128 * 2 * DEFAULT_NUM_CTX / 1e9)
    assert card_for("nomic-embed-text:latest").kv_gb == 0
    assert {c.use for c in CARDS} >= {"chat", "code", "embedding", "vision", "reasoning"}


# --- an idle fleet ---------------------------------------------------------------------------


def test_an_empty_fleet_has_the_shape_and_nothing_in_it():
    body = recommend(health_snapshot(now=1000.0))
    assert body == {
        "generated_at": 1000.0, "headroom_pct": 20.0, "window_s": 86400,
        "fleet": {"requests_24h": 0, "models_requested": 0, "active": False},
        "demand": [], "missing": [], "nodes": [], "recommendations": []}


def test_an_idle_fleet_gets_only_keep_rows_for_what_is_loaded():
    snap = health_snapshot(
        beat("studio", 128, loaded=["llama3.2:3b"], available=["llama3.3:70b", "qwen3:32b"]),
        beat("laptop", 8, available=["llama3.3:70b"], port=11435))
    body = recommend(snap)
    assert [(r["node_id"], r["model"], r["action"]) for r in body["recommendations"]] == [
        ("studio", "llama3.2:3b", "keep")]
    [keep] = body["recommendations"]
    assert keep["pull"] is None and "no requests in the last 24 h" in keep["reason"]
    assert body["missing"] == [] and body["fleet"]["active"] is False
    # even a model that can never load on the laptop is left alone while nobody asks for anything
    assert not rows(body, "remove")


# --- missing models --------------------------------------------------------------------------


def test_a_missing_model_in_demand_is_pulled_where_it_fits_best():
    snap = health_snapshot(
        beat("big", 64, loaded=["llama3.2:3b"]),
        beat("small", 16, available=["llama3.2:1b"], port=11435),
        day=day(**{"qwen2.5-coder:14b": {"requests": 12, "rejected": 12},
                   "llama3.2:3b": {"requests": 5, "completed": 5}}))
    body = recommend(snap)
    [pull] = rows(body, "pull")
    assert pull["node_id"] == "big" and pull["model"] == "qwen2.5-coder:14b"
    assert pull["size_gb"] == 9.0 and pull["memory_gb"] == card_for("qwen2.5-coder:14b").memory_gb
    assert "requested 12 times" in pull["reason"] and "12 refused" in pull["reason"]
    assert "51.2 GB (64.0 GB of memory less 20 % headroom)" in pull["reason"]
    assert body["missing"] == [{"model": "qwen2.5-coder:14b", "requests_24h": 12,
                                "rejected_24h": 12, "node_id": "big",
                                "reason": "pull it on big"}]
    assert_everything_suggested_fits(body)


def test_two_missing_models_do_not_both_count_on_the_same_free_memory():
    snap = health_snapshot(
        beat("a", 32), beat("b", 32, port=11435),
        day=day(**{"qwen3:14b": {"requests": 9, "rejected": 9},
                   "qwen2.5:14b": {"requests": 8, "rejected": 8}}))
    body = recommend(snap)
    placed = {r["model"]: r["node_id"] for r in rows(body, "pull")}
    assert set(placed) == {"qwen3:14b", "qwen2.5:14b"}
    assert placed["qwen3:14b"] != placed["qwen2.5:14b"], "the second goes where room is left"


def test_an_embedding_model_requested_and_missing_is_pulled():
    snap = health_snapshot(beat("n", 16, loaded=["llama3.2:3b"]),
                           day=day(**{"nomic-embed-text": {"requests": 40, "rejected": 40}}))
    [pull] = rows(recommend(snap), "pull")
    assert pull["model"] == "nomic-embed-text:latest" and pull["use"] == "embedding"


def test_nothing_is_suggested_that_does_not_fit():
    snap = health_snapshot(
        beat("laptop", 16, loaded=["llama3.2:3b"]),
        beat("mini", 8, port=11435),
        day=day(**{"llama3.3:70b": {"requests": 30, "rejected": 30},
                   "deepseek-r1:14b": {"requests": 4, "rejected": 4},
                   "llama3.2:3b": {"requests": 50, "completed": 50}}))
    body = recommend(snap, Policy(headroom_pct=20, min_requests=5))
    assert not [r for r in body["recommendations"] if r["model"] == "llama3.3:70b"]
    by_model = {m["model"]: m for m in body["missing"]}
    assert by_model["llama3.3:70b"]["node_id"] is None
    assert "needs about 46.7 GB loaded" in by_model["llama3.3:70b"]["reason"]
    assert "12.8 GB" in by_model["llama3.3:70b"]["reason"]  # the most any node gives models
    # deepseek-r1:14b (10.5 GB) fits the laptop's 12.8 GB but not the mini's 6.4 GB
    [pull] = rows(body, "pull")
    assert (pull["node_id"], pull["model"]) == ("laptop", "deepseek-r1:14b")
    assert_everything_suggested_fits(body)
    # with half the memory kept free, it fits nowhere
    tight = recommend(snap, Policy(headroom_pct=50, min_requests=5))
    assert not rows(tight, "pull") and not rows(tight, "replace")
    assert {m["model"]: m["node_id"] for m in tight["missing"]}["deepseek-r1:14b"] is None


def test_no_pull_where_the_disk_has_no_room():
    full = beat("n", 64, disk={"total_gb": 500.0, "used_gb": 495.0, "available_gb": 5.0})
    snap = health_snapshot(full, day=day(**{"qwen3:14b": {"requests": 3, "rejected": 3}}))
    body = recommend(snap)
    assert not rows(body, "pull")
    assert "9.3 GB on disk" in body["missing"][0]["reason"]


def test_a_model_outside_the_table_is_listed_missing_with_no_guess():
    snap = health_snapshot(beat("n", 128),
                           day=day(**{"someone/custom:7b": {"requests": 6, "rejected": 6}}))
    body = recommend(snap)
    assert not body["recommendations"]
    [entry] = body["missing"]
    assert entry["node_id"] is None and "not in the curated table" in entry["reason"]


def test_a_model_held_only_by_an_offline_node_counts_as_missing():
    snap = health_snapshot(
        beat("gone", 64, available=["qwen3:8b"]), beat("here", 32, port=11435),
        status={"gone": "offline"}, day=day(**{"qwen3:8b": {"requests": 7, "rejected": 7}}))
    body = recommend(snap)
    [pull] = rows(body, "pull")
    assert pull["node_id"] == "here"
    assert not rows(body, node="gone"), "an offline node gets no recommendations"
    assert {n["node_id"]: n["routable"] for n in body["nodes"]} == {"gone": False, "here": True}


# --- better-fitting variants -----------------------------------------------------------------


def test_a_big_node_serving_a_small_chat_model_in_demand_gets_a_larger_one():
    snap = health_snapshot(
        beat("studio", 64, loaded=["llama3.2:3b"]),
        day=day(**{"llama3.2:3b": {"requests": 200, "completed": 200}}))
    body = recommend(snap)
    [replace] = rows(body, "replace")
    card = card_for(replace["model"])
    assert replace["replaces"] == "llama3.2:3b" and card.use == "chat" and card.default
    assert card.params_b >= 14 and card.memory_gb <= 0.5 * 51.2
    assert "200 requests" in replace["reason"] and "chat demand" in replace["reason"]
    assert_everything_suggested_fits(body)
    # below the demand that calls for it, nothing but keeping what is there
    quiet = recommend(snap, Policy(min_requests=500))
    assert [r["action"] for r in quiet["recommendations"]] == ["keep"]


def test_an_upgrade_already_on_disk_is_preferred_among_equals():
    snap = health_snapshot(
        beat("studio", 64, loaded=["llama3.2:3b"], available=["qwen3:32b"]),
        day=day(**{"llama3.2:3b": {"requests": 200, "completed": 200}}))
    [replace] = rows(recommend(snap), "replace")
    assert replace["model"] == "qwen3:32b" and "already on this node's disk" in replace["reason"]


def test_a_small_node_gets_no_upgrade_it_cannot_hold():
    snap = health_snapshot(beat("mini", 8, loaded=["llama3.2:3b"]),
                           day=day(**{"llama3.2:3b": {"requests": 500, "completed": 500}}))
    body = recommend(snap)
    for row in rows(body, "replace"):
        assert row["memory_gb"] <= 0.5 * 6.4
    assert_everything_suggested_fits(body)


def test_a_node_at_memory_pressure_gets_a_smaller_quantisation():
    loaded = {"name": "llama3.3:70b", "size_bytes": int(47 * GB)}
    pressed = beat("studio", 64, loaded=[loaded])
    pressed["memory"] = {"total_gb": 64.0, "used_gb": 60.0, "available_gb": 4.0,
                         "pressure": "warn"}
    snap = health_snapshot(pressed,
                           day=day(**{"llama3.3:70b": {"requests": 30, "completed": 30}}))
    body = recommend(snap)
    [replace] = rows(body, "replace")
    assert replace["replaces"] == "llama3.3:70b"
    assert replace["model"].startswith("llama3.3:70b-instruct-q")  # the same model, smaller
    assert replace["memory_gb"] < card_for("llama3.3:70b").memory_gb
    assert "memory pressure is warn" in replace["reason"] and "4.0 GB free" in replace["reason"]
    assert_everything_suggested_fits(body)


def test_a_discrete_gpu_sets_the_budget_not_system_memory():
    gpu = beat("pc", 64, gpus=[{"name": "RTX 4060", "memory_total_gb": 8.0}])
    snap = health_snapshot(gpu, day=day(**{"qwen2.5:14b": {"requests": 5, "rejected": 5},
                                           "qwen2.5:7b": {"requests": 5, "rejected": 5}}))
    body = recommend(snap)
    [node] = body["nodes"]
    assert node["memory"]["basis"] == "gpu" and node["memory"]["budget_gb"] == 6.4
    assert node["gpus"] == {"count": 1, "memory_gb": 8.0}
    assert [r["model"] for r in rows(body, "pull")] == ["qwen2.5:7b"]  # 5.4 GB, not 10.5 GB


# --- removals --------------------------------------------------------------------------------


def test_an_unused_model_too_large_to_load_is_suggested_for_removal_once_the_fleet_is_busy():
    big = {"name": "llama3.3:70b", "size_bytes": int(43 * GB)}
    snap = health_snapshot(beat("mini", 16, loaded=["llama3.2:3b"], available=[big]),
                           day=day(**{"llama3.2:3b": {"requests": 40, "completed": 40}}))
    body = recommend(snap)
    [remove] = rows(body, "remove")
    assert remove["model"] == "llama3.3:70b" and remove["pull"] is None
    assert remove["delete"] == {"method": "POST", "path": "/dashboard/api/delete",
                                "body": {"model": "llama3.3:70b", "node_id": "mini"}}
    assert "no requests in the last 24 h" in remove["reason"]
    # a quiet fleet (fewer requests than the demand threshold) is not told to delete anything
    assert not rows(recommend(snap, Policy(min_requests=100)), "remove")


# --- settings --------------------------------------------------------------------------------


def test_the_settings_are_declared_and_checked():
    host = make_host("fleet-recommendations")
    policy = _policy(make_config(host, {"FLEET_RECOMMEND_HEADROOM_PCT": "35",
                                        "FLEET_RECOMMEND_MIN_REQUESTS": "7"}))
    assert policy == Policy(headroom_pct=35.0, min_requests=7)
    with pytest.raises(SettingError, match="FLEET_RECOMMEND_HEADROOM_PCT"):
        _policy(make_config(host, {"FLEET_RECOMMEND_HEADROOM_PCT": "100"}))
