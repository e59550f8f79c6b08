"""The availability-trend formula at its edges, with no server: the signal is built through its
installed entry point and scores hand-made candidates; the ranking tests run the kernel's Scorer
with thermal beside it."""

import math

import herd_signal_availability_trend
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

MISSING = object()


def capacity(score=MISSING, trend=MISSING, mode=MISSING):
    fragment = {}
    for key, value in (("availability_score", score), ("trend", trend), ("mode", mode)):
        if value is not MISSING:
            fragment[key] = value
    return fragment


def cand(node="n", cap=MISSING, loaded=False, available_gb=24.0):
    extras = {} if cap is MISSING else {"capacity": cap}
    heartbeat = Heartbeat(
        node_id=node,
        memory=MemoryReading(total_gb=32.0, used_gb=32.0 - available_gb, available_gb=available_gb),
        extras=extras,
    )
    return Candidate(
        node=NodeState(node_id=node, heartbeat=heartbeat),
        model="m:latest",
        loaded=LoadedModel(name="m") if loaded else None,
        available=AvailableModel(name="m"),
        in_flight=0,
        pending=0,
        node_in_flight=0,
        unloaded_ago=None,
    )


def signal(env=None):
    return load_signal("signal-availability-trend", env)


def scores(sig, candidates, **request):
    host = make_host("signal-availability-trend")
    ctx = ScoringContext(
        request=RouteRequest(model="m", api="ollama", path="/api/chat", stream=True, **request),
        model="m:latest",
        now=0.0,
        config=make_config(host),
        latency=LatencyHistory(),
    )
    return sig.score(ctx, candidates)


def one(sig, cap):
    [value] = scores(sig, [cand(cap=cap)])
    return value


def test_defaults_and_range():
    sig = signal()
    assert sig.name == "availability-trend"
    assert (sig.weight, sig.low, sig.high) == (1.0, -10.0, 10.0)
    assert sig.level_share == 0.6


@pytest.mark.parametrize(
    ("score", "trend", "points"),
    [
        (1.0, 1.0, 10),  # free and freeing up: the top
        (0.0, -1.0, -10),  # busy and getting busier: the bottom
        (0.5, 0.0, 0),  # half free, steady: neutral, like no data
        (1.0, 0.0, 6),  # free now, steady: the level share
        (0.5, 1.0, 4),  # half free but freeing: the trend share
        (0.0, 1.0, -2),  # busy now, freeing up fast: still below neutral
        (0.75, -0.5, 1),  # 0.6 * 0.5 - 0.4 * 0.5
        (1, -1, 2),  # integers are numbers too
    ],
)
def test_formula(score, trend, points):
    assert one(signal(), capacity(score, trend)) == pytest.approx(points)


def test_level_share_setting_and_its_clamp():
    level_only = signal({"FLEET_SCORE_AVAILABILITY_LEVEL_SHARE": "1"})
    assert one(level_only, capacity(1.0, -1.0)) == pytest.approx(10)
    trend_only = signal({"FLEET_SCORE_AVAILABILITY_LEVEL_SHARE": "0"})
    assert one(trend_only, capacity(0.0, 0.5)) == pytest.approx(5)
    # out-of-range shares are clamped, so the blend never leaves [-1, 1] before the final clamp
    assert signal({"FLEET_SCORE_AVAILABILITY_LEVEL_SHARE": "1.5"}).level_share == 1.0
    assert signal({"FLEET_SCORE_AVAILABILITY_LEVEL_SHARE": "-2"}).level_share == 0.0


def test_max_setting_scales_points_and_range():
    sig = signal({"FLEET_SCORE_AVAILABILITY_TREND_MAX": "25"})
    assert (sig.low, sig.high) == (-25, 25)
    assert one(sig, capacity(1.0, 1.0)) == pytest.approx(25)
    assert one(sig, capacity(mode="paused")) == -25


def test_paused_gives_the_lowest_score_whatever_else_it_says():
    sig = signal()
    assert one(sig, capacity(mode="paused")) == -10
    assert one(sig, capacity(1.0, 1.0, mode="paused")) == -10
    assert one(sig, capacity("junk", None, mode="paused")) == -10
    assert one(sig, capacity(1.0, 1.0, mode="learning")) == pytest.approx(10)
    # a negative max inverts the blend, but a paused node stays at the bottom
    inverted = signal({"FLEET_SCORE_AVAILABILITY_TREND_MAX": "-10"})
    assert one(inverted, capacity(mode="paused")) == inverted.low == -10


@pytest.mark.parametrize(
    "cap",
    [
        MISSING,  # no learner on the node: no history at all
        {},
        None,
        "available",
        [0.9, 0.5],
        capacity(0.9),  # trend missing
        capacity(trend=0.5),  # score missing
        capacity(float("nan"), 0.5),
        capacity(0.9, float("nan")),
        capacity(float("inf"), 0.5),
        capacity(1.01, 0.5),
        capacity(-0.01, 0.5),
        capacity(0.9, 1.5),
        capacity(0.9, -1.01),
        capacity("0.9", 0.5),
        capacity(True, 0.5),
        capacity(0.9, False),
        capacity(None, None),
        capacity({"value": 0.9}, 0.5),
    ],
)
def test_missing_or_bad_capacity_data_is_neutral(cap):
    assert one(signal(), cap) == 0


def test_single_candidate_and_no_candidates():
    assert scores(signal(), [cand(cap=capacity(1.0, 1.0))]) == [pytest.approx(10)]
    assert scores(signal(), []) == []


def test_full_memory_and_huge_context_do_not_matter():
    # how full the machine is right now is memory-fit's question; this signal reads the learner
    free, full = cand("a", capacity(0.8, 0.2)), cand("b", capacity(0.8, 0.2), available_gb=0.0)
    values = scores(signal(), [free, full], num_ctx=1_000_000, estimated_tokens=900_000)
    assert values == pytest.approx([4.4, 4.4])


def test_every_value_lies_in_the_declared_range():
    sig = signal()
    grid = [i / 4 for i in range(5)]
    for score in grid:
        for trend in (-1.0, -0.5, 0.0, 0.5, 1.0):
            value = one(sig, capacity(score, trend))
            assert sig.low <= value <= sig.high and math.isfinite(value)


def test_registered_through_entry_point():
    host = make_host("signal-availability-trend")
    assert [p.name for p in host.loaded] == ["signal-availability-trend"]
    assert {s.env for s in host.settings()} == {
        s.env for s in herd_signal_availability_trend.SETTINGS
    }


# --- the ranking effect, through the kernel's Scorer with thermal beside it ----------------------


def decide(nodes):
    """Route one request for m across ``nodes`` = [(node_id, loaded?, capacity or None)]."""
    fleet = Fleet()
    for node_id, loaded, cap in nodes:
        extra = {"extras": {"capacity": cap}} if cap is not None else {}
        body = heartbeat_payload(
            node_id, **({"loaded": ["m"]} if loaded else {"available": ["m"]}), **extra
        )
        fleet.apply_heartbeat(structure(body, Heartbeat))
    host = make_host("signal-thermal,signal-availability-trend")
    config = make_config(host)
    request = RouteRequest(model="m", api="ollama", path="/api/chat", stream=True)
    decision = Scorer(fleet, host.signals(config), config).choose(request)
    assert isinstance(decision, Decision)
    return decision


def test_with_thermal_a_cold_model_goes_to_the_machine_freeing_up():
    decision = decide(
        [
            ("a-busy", False, capacity(0.3, -0.6)),
            ("b-freeing", False, capacity(0.8, 0.5)),
            ("c-unknown", False, None),
        ]
    )
    assert decision.node.node_id == "b-freeing"
    assert decision.breakdown == {"thermal": 10, "availability-trend": 5.6}


def test_with_thermal_a_node_without_a_learner_beats_one_getting_busy():
    decision = decide([("a-busy", False, capacity(0.2, -0.5)), ("b-unknown", False, None)])
    assert decision.node.node_id == "b-unknown"
    assert decision.score == 10


def test_with_thermal_a_paused_node_loses_among_equals_but_not_against_a_hot_model():
    # among cold nodes the paused one comes last
    decision = decide([("a-paused", False, capacity(mode="paused")), ("b", False, None)])
    assert decision.node.node_id == "b"
    # the 20-point swing does not overturn thermal's 40-point hot/cold gap: hot and paused
    # (50 - 10) still beats cold and free (10 + 10); eliminating paused nodes is the kernel's job
    decision = decide(
        [("a-paused", True, capacity(mode="paused")), ("b-free", False, capacity(1, 1))]
    )
    assert decision.node.node_id == "a-paused"
    assert decision.breakdown == {"thermal": 50, "availability-trend": -10}
