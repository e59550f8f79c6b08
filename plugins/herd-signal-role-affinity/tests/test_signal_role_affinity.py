"""The role-affinity formula at its edges, with no server: the signal is built through its
installed entry point and scores hand-made candidates; the ranking tests run the kernel's Scorer
with thermal beside it."""

import math

import herd_signal_role_affinity
import pytest

from herd_kernel.api import Candidate, ScoringContext
from herd_kernel.fleet import Fleet
from herd_kernel.latency import LatencyHistory
from herd_kernel.models import (
    AvailableModel,
    Heartbeat,
    LoadedModel,
    MemoryReading,
    NodeState,
    RouteRequest,
    structure,
)
from herd_kernel.scoring import Decision, Scorer
from herd_kernel.testing import heartbeat_payload, load_signal, make_config, make_host

GIB = 1024**3


def cand(node, total_gb, size_gb=None, loaded_gb=None, available_gb=None):
    """A candidate on a node with ``total_gb`` of memory holding model m on disk (``size_gb``)
    and, with ``loaded_gb``, in memory too. ``available_gb`` defaults to all of it free."""
    memory = MemoryReading(
        total_gb=total_gb,
        used_gb=total_gb - (total_gb if available_gb is None else available_gb),
        available_gb=total_gb if available_gb is None else available_gb,
    )
    return Candidate(
        node=NodeState(node_id=node, heartbeat=Heartbeat(node_id=node, memory=memory)),
        model="m:latest",
        loaded=None
        if loaded_gb is None
        else LoadedModel(name="m", size_bytes=int(loaded_gb * GIB)),
        available=AvailableModel(name="m", size_bytes=int((size_gb or 0) * GIB)),
        in_flight=0,
        pending=0,
        node_in_flight=0,
        unloaded_ago=None,
    )


# The formula tests below were written against these settings (round numbers that make the
# arithmetic readable); the shipped defaults, tuned on bench/routing, are checked separately.
FORMULA_ENV = {"FLEET_SCORE_ROLE_AFFINITY_MAX": "15"}


def signal(env=None):
    return load_signal("signal-role-affinity", {**FORMULA_ENV, **(env or {})})


def context(**request):
    host = make_host("signal-role-affinity")
    return ScoringContext(
        request=RouteRequest(model="m", api="ollama", path="/api/chat", stream=True, **request),
        model="m:latest",
        now=0.0,
        config=make_config(host),
        latency=LatencyHistory(),
    )


def scores(sig, candidates, **request):
    return sig.score(context(**request), candidates)


def test_defaults_and_range():
    sig = load_signal("signal-role-affinity")  # the shipped default (tuned on bench/routing)
    assert (sig.weight, sig.low, sig.high) == (1.0, 0.0, 5.0)
    sig = signal()  # the formula tests' settings
    assert sig.name == "role-affinity"
    assert (sig.weight, sig.low, sig.high) == (1.0, 0.0, 15.0)
    assert (sig.large_gb, sig.small_gb) == (20.0, 8.0)


def test_large_model_goes_to_the_biggest_machine():
    big, mid, small = cand("big", 128, 40), cand("mid", 64, 40), cand("small", 32, 40)
    assert scores(signal(), [big, mid, small]) == pytest.approx([15, 7.5, 3.75])


def test_small_model_goes_to_the_smallest_machine():
    big, mid, small = cand("big", 128, 4), cand("mid", 64, 4), cand("small", 32, 4)
    assert scores(signal(), [big, mid, small]) == pytest.approx([0, 7.5, 11.25])


def test_mid_model_leans_gently_to_bigger_machines():
    big, small = cand("big", 128, 12), cand("small", 32, 12)
    assert scores(signal(), [big, small]) == pytest.approx([7.5, 1.875])


def test_thresholds_are_inclusive():
    # exactly 20 GB is large, exactly 8 GB is small
    assert scores(signal(), [cand("big", 64, 20), cand("small", 32, 20)]) == pytest.approx(
        [15, 7.5]
    )
    assert scores(signal(), [cand("big", 64, 8), cand("small", 32, 8)]) == pytest.approx([0, 7.5])


def test_equal_nodes_score_equal_in_every_class():
    for size in (4, 12, 40):
        values = scores(signal(), [cand("a", 64, size), cand("b", 64, size), cand("c", 64, size)])
        assert len(set(values)) == 1, (size, values)


def test_a_single_candidate_scores_like_an_equal_fleet():
    assert scores(signal(), [cand("only", 16, 40)]) == [15]
    assert scores(signal(), [cand("only", 16, 4)]) == [0]
    assert scores(signal(), [cand("only", 16, 12)]) == [7.5]


def test_no_candidates_no_scores():
    assert scores(signal(), []) == []


def test_unknown_size_everywhere_is_neutral_not_guessed():
    # a name like "70b" is never read: with no reported size there is nothing to classify
    unknown = [cand("big", 128, None), cand("small", 16, None)]
    assert scores(signal(), unknown) == [0, 0]


def test_a_node_without_a_size_uses_the_largest_another_node_reports():
    # "small" reports no size; the 40 GB from "big" makes the model large on both
    values = scores(signal(), [cand("big", 128, 40), cand("small", 32, None)])
    assert values == pytest.approx([15, 3.75])
    # the loaded size (/api/ps) counts when the disk size is missing
    values = scores(signal(), [cand("big", 128, None, loaded_gb=4), cand("small", 32, None)])
    assert values == pytest.approx([0, 11.25])


def test_unknown_memory_is_neutral_for_that_node_only():
    values = scores(signal(), [cand("known", 64, 4), cand("unreported", 0, 4), cand("half", 32, 4)])
    assert values == pytest.approx([0, 0, 7.5])
    assert scores(signal(), [cand("a", 0, 40), cand("b", 0, 40)]) == [0, 0]


def test_full_memory_does_not_change_the_role():
    # the role is about the machine's class (total memory), not what is free this second;
    # whether the model fits now is memory-fit's question
    empty = scores(signal(), [cand("big", 128, 40), cand("small", 32, 40)])
    full = scores(
        signal(), [cand("big", 128, 40, available_gb=0), cand("small", 32, 40, available_gb=0)]
    )
    assert full == empty


def test_no_history_and_huge_context_do_not_matter():
    candidates = [cand("big", 128, 40), cand("small", 32, 40)]
    plain = scores(signal(), candidates)
    assert scores(signal(), candidates, num_ctx=1_000_000, estimated_tokens=900_000) == plain
    assert signal().score(None, candidates) == plain  # the context is not even read


def test_every_value_lies_in_the_declared_range():
    sig = signal()
    for size in (0.5, 8, 9, 19.9, 20, 400):
        for values in (
            scores(sig, [cand("a", 512, size), cand("b", 8, size), cand("c", 0.5, size)]),
            scores(sig, [cand("a", 8, size)]),
        ):
            assert all(sig.low <= v <= sig.high and math.isfinite(v) for v in values)


def test_settings_change_points_and_thresholds():
    sig = signal(
        {
            "FLEET_SCORE_ROLE_AFFINITY_MAX": "30",
            "FLEET_SCORE_ROLE_LARGE_THRESHOLD_GB": "10",
            "FLEET_SCORE_ROLE_SMALL_THRESHOLD_GB": "2",
        }
    )
    assert (sig.low, sig.high) == (0, 30)
    assert scores(sig, [cand("big", 64, 12), cand("small", 32, 12)]) == pytest.approx([30, 15])
    assert scores(sig, [cand("big", 64, 2), cand("small", 32, 2)]) == pytest.approx([0, 15])


def test_negative_max_inverts_and_keeps_the_range_honest():
    sig = signal({"FLEET_SCORE_ROLE_AFFINITY_MAX": "-10"})
    assert (sig.low, sig.high) == (-10, 0)
    assert scores(sig, [cand("big", 64, 40), cand("small", 32, 40)]) == pytest.approx([-10, -5])


def test_registered_through_entry_point():
    host = make_host("signal-role-affinity")
    assert [p.name for p in host.loaded] == ["signal-role-affinity"]
    assert {s.env for s in host.settings()} == {s.env for s in herd_signal_role_affinity.SETTINGS}


# --- the ranking effect, through the kernel's Scorer with thermal beside it ----------------------


def decide(nodes, model_gb, env=None):
    """Route one request for m across ``nodes`` = [(node_id, memory_gb, loaded?)]."""
    fleet = Fleet()
    entry = {"name": "m", "size_bytes": int(model_gb * GIB)}
    for node_id, memory_gb, loaded in nodes:
        body = heartbeat_payload(
            node_id,
            memory_gb=memory_gb,
            **({"loaded": [entry]} if loaded else {"available": [entry]}),
        )
        fleet.apply_heartbeat(structure(body, Heartbeat))
    host = make_host("signal-thermal,signal-role-affinity")
    config = make_config(host, {**FORMULA_ENV, **(env or {})})
    request = RouteRequest(model="m", api="ollama", path="/api/chat", stream=True)
    decision = Scorer(fleet, host.signals(config), config).choose(request)
    assert isinstance(decision, Decision)
    return decision


def test_with_thermal_a_cold_small_model_goes_to_the_small_machine():
    decision = decide([("studio", 128, False), ("mini", 16, False)], model_gb=4)
    assert decision.node.node_id == "mini"
    assert decision.breakdown == {"thermal": 10, "role-affinity": 13.12}


def test_with_thermal_a_cold_large_model_goes_to_the_big_machine():
    decision = decide([("mini", 64, False), ("studio", 128, False)], model_gb=40)
    assert decision.node.node_id == "studio"
    assert decision.breakdown == {"thermal": 10, "role-affinity": 15}


def test_role_affinity_never_overturns_a_hot_model():
    # hot 50 + 0 on the big machine beats cold 10 + 13.1 on the small one: the 15-point range is
    # below thermal's 20-point gaps, so role affinity only orders nodes of equal temperature
    decision = decide([("studio", 128, True), ("mini", 16, False)], model_gb=4)
    assert decision.node.node_id == "studio"
    assert decision.breakdown == {"thermal": 50, "role-affinity": 0}
