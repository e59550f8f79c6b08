"""The queue-depth formula at its edges, with no server: the signal is built through its installed
entry point and scores hand-made candidates."""

import herd_signal_queue_depth
import pytest

from herd_kernel.api import Candidate
from herd_kernel.models import (
    AvailableModel,
    Endpoint,
    Heartbeat,
    LoadedModel,
    NodeState,
)
from herd_kernel.scoring import weighted_totals
from herd_kernel.testing import load_signal, make_config, make_host, scoring_context


def cand(node="n", *, in_flight=0, pending=0, node_in_flight=None, num_parallel=0, loaded=False,
         unloaded_ago=None, ollama=True):
    report = Endpoint(kind="ollama", url="http://127.0.0.1:11434", num_parallel=num_parallel) \
        if ollama else None
    endpoints = (report,) if report is not None else ()
    return Candidate(
        node=NodeState(node_id=node, heartbeat=Heartbeat(node_id=node, endpoints=endpoints),
                       endpoints=endpoints, serving={"m:latest": e for e in endpoints}),
        model="m:latest",
        loaded=LoadedModel(name="m") if loaded else None,
        available=AvailableModel(name="m"),
        in_flight=in_flight,
        pending=pending,
        node_in_flight=in_flight if node_in_flight is None else node_in_flight,
        unloaded_ago=unloaded_ago,
    )


# The formula tests below were written against these settings (round numbers that make the
# arithmetic readable); the shipped defaults, tuned on bench/routing, are checked separately.
FORMULA_ENV = {"FLEET_SCORE_QUEUE_DEPTH_PENALTY_PER": "6", "FLEET_SCORE_QUEUE_DEPTH_MAX_PENALTY": "30"}


def signal(env=None):
    return load_signal("signal-queue-depth", {**FORMULA_ENV, **(env or {})})


def ctx(config=None, **request):
    return scoring_context(config=config, **request)


def test_defaults_and_range():
    sig = load_signal("signal-queue-depth")  # the shipped defaults (tuned on bench/routing)
    assert sig.name == "queue-depth" and sig.weight == 1.0
    assert (sig.low, sig.high) == (-80, 0)
    assert signal().low == -30  # the formula tests' settings


def test_idle_node_costs_nothing():
    assert signal().score(ctx(), [cand()]) == [0]


def test_depth_counts_running_and_waiting_up_to_the_cap():
    sig = signal()
    scores = sig.score(ctx(), [
        cand(in_flight=1), cand(pending=1), cand(in_flight=1, pending=2),
        cand(in_flight=5), cand(in_flight=1, pending=99),
    ])
    assert scores == [-6, -6, -18, -30, -30]


def test_parallel_slots_share_the_depth():
    sig = signal()
    scores = sig.score(ctx(), [
        cand(in_flight=4, num_parallel=4), cand(in_flight=2, pending=2, num_parallel=2),
        cand(in_flight=3, num_parallel=0), cand(in_flight=3, ollama=False),
    ])
    assert scores == [-6, -12, -18, -18]  # 0 or no report: one slot, as Ollama defaults


def test_other_models_on_the_node_count_at_a_discount():
    sig = signal()
    scores = sig.score(ctx(), [
        cand(node_in_flight=2),  # two requests for other models: 2 * 0.5 = 1
        cand(in_flight=1, node_in_flight=3),  # 1 + 2 * 0.5 = 2
        cand(node_in_flight=2, num_parallel=2),  # the discount is also shared by the slots
        cand(in_flight=2, node_in_flight=1),  # inconsistent counters never give a bonus
    ])
    assert scores == pytest.approx([-6, -12, -3, -12])


def test_settings():
    sig = signal({"FLEET_SCORE_QUEUE_DEPTH_PENALTY_PER": "10",
                  "FLEET_SCORE_QUEUE_DEPTH_MAX_PENALTY": "50",
                  "FLEET_SCORE_QUEUE_OTHER_MODEL_FACTOR": "0"})
    assert sig.low == -50
    assert sig.score(ctx(), [cand(in_flight=2), cand(in_flight=9), cand(node_in_flight=4)]) == [
        -20, -50, 0]


def test_single_zero_candidates_and_no_context():
    sig = signal()
    assert sig.score(ctx(), []) == []
    assert sig.score(None, [cand(in_flight=1)]) == [-6]


def test_huge_context_does_not_change_the_penalty():
    sig = signal()
    big = ctx(num_ctx=1_000_000, estimated_tokens=900_000)
    assert sig.score(big, [cand(in_flight=2)]) == sig.score(ctx(), [cand(in_flight=2)]) == [-12]


def totals(signals, context, candidates):
    """Rank as the kernel does (clamp, weight, sum)."""
    return weighted_totals(signals, context, candidates)[0]


def test_a_saturated_hot_node_loses_to_an_idle_warm_one():
    host = make_host("signal-thermal,signal-queue-depth")
    config = make_config(host)
    signals = host.signals(config)
    hot_busy = cand("hot", loaded=True, in_flight=5)  # 50 - min(80, 5 * 20)
    warm_idle = cand("warm", unloaded_ago=60)  # 30 - 0
    cold_idle = cand("cold")  # 10 - 0
    hot_light = cand("hot-light", loaded=True, in_flight=1, num_parallel=4)  # 50 - 20 / 4
    hot_two = cand("hot-two", loaded=True, in_flight=2)  # 50 - 40: a queue already costs a load
    assert totals(signals, ctx(config), [hot_busy, warm_idle, cold_idle]) == [-30, 30, 10]
    assert totals(signals, ctx(config), [hot_light, warm_idle]) == pytest.approx([45, 30])
    assert totals(signals, ctx(config), [hot_two, cold_idle]) == pytest.approx([10, 10])


def test_registered_through_entry_point():
    host = make_host("signal-queue-depth")
    assert [p.name for p in host.loaded] == ["signal-queue-depth"]
    assert {s.env for s in host.settings()} == {s.env for s in herd_signal_queue_depth.SETTINGS}
