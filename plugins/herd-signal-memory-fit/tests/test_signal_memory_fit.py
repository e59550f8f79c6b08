"""The memory-fit formula at its edges, with no server: the signal is built through its installed
entry point and scores hand-made candidates."""

import math

import herd_signal_memory_fit
import pytest

from herd_kernel.api import Candidate
from herd_kernel.models import (
    AvailableModel,
    Heartbeat,
    LoadedModel,
    MemoryReading,
    NodeState,
)
from herd_kernel.testing import load_signal, make_config, make_host, scoring_context

GB = 1024**3


def cand(node="n", *, size_gb=10.0, loaded=False, available_gb=64.0, total_gb=None,
         pressure="normal", extras=None, unloaded_ago=None, in_flight=0):
    size = int(size_gb * GB)
    total_gb = max(64.0, available_gb) if total_gb is None else total_gb
    hb = Heartbeat(
        node_id=node,
        memory=MemoryReading(total_gb=total_gb, used_gb=total_gb - available_gb,
                             available_gb=available_gb, pressure=pressure),
        extras=extras or {},
    )
    return Candidate(
        node=NodeState(node_id=node, heartbeat=hb),
        model="m:latest",
        loaded=LoadedModel(name="m", size_bytes=size) if loaded else None,
        available=AvailableModel(name="m", size_bytes=size),
        in_flight=in_flight,
        node_in_flight=in_flight,
        unloaded_ago=unloaded_ago,
    )


def signal(env=None):
    return load_signal("signal-memory-fit", env)


def ctx(config=None, **request):
    return scoring_context(config=config, **request)


# need = 10 GB * 1.2 = 12 GB: room 24 is the comfort ratio 2.0, room 12 is exactly 1.0


def test_defaults_and_range():
    sig = signal()
    assert sig.name == "memory-fit" and sig.weight == 1.0
    assert (sig.low, sig.high) == (-40, 20)


def test_loaded_model_gets_full_points_even_when_memory_is_full():
    sig = signal()
    assert sig.score(ctx(), [cand(loaded=True, available_gb=0.0)]) == [20]
    assert sig.score(ctx(), [cand(loaded=True, available_gb=0.0, pressure="critical")]) == [20]


def test_ratio_edges():
    sig = signal()
    rooms = [100.0, 24.0, 18.0, 12.0, 11.99, 0.0]
    scores = sig.score(ctx(), [cand(available_gb=r) for r in rooms])
    assert scores[:2] == [20, 20]  # at or above comfort
    assert scores[2] == pytest.approx(10)  # ratio 1.5: half way between 1 and 2
    assert scores[3] == 0  # fits exactly, with nothing to spare
    assert scores[4:] == [-40, -40]  # would only fit by evicting; full memory


def test_ceiling_caps_room_when_reported():
    sig = signal()
    capped = cand(available_gb=60.0, extras={"capacity": {"ceiling_gb": 18.0}})
    tight = cand(available_gb=60.0, extras={"capacity": {"ceiling_gb": 8.0, "mode": "learned_low"}})
    loose = cand(available_gb=18.0, extras={"capacity": {"ceiling_gb": 100.0}})
    assert sig.score(ctx(), [capped, tight, loose]) == pytest.approx([10, -40, 10])


@pytest.mark.parametrize("extras", [
    {}, {"capacity": None}, {"capacity": "full"}, {"capacity": {}},
    {"capacity": {"ceiling_gb": "8"}}, {"capacity": {"ceiling_gb": True}},
    {"capacity": {"ceiling_gb": None}}, {"capacity": {"ceiling_gb": -1}},
    {"capacity": {"ceiling_gb": 0}}, {"capacity": {"ceiling_gb": math.nan}},
    {"capacity": {"ceiling_gb": math.inf}}, {"capacity": [1, 2]},
])
def test_absent_or_malformed_ceiling_is_ignored(extras):
    assert signal().score(ctx(), [cand(available_gb=30.0, extras=extras)]) == [20]


def test_pressure():
    sig = signal()
    scores = sig.score(ctx(), [
        cand(available_gb=100.0, pressure="critical"),
        cand(available_gb=100.0, pressure="warn"),
        cand(available_gb=18.0, pressure="warn"),
        cand(available_gb=5.0, pressure="warn"),  # the penalty is not halved
    ])
    assert scores == pytest.approx([-40, 10, 5, -40])


def test_unknown_size_is_neutral_and_never_guessed_from_the_name():
    sig = signal()
    c = Candidate(
        node=NodeState(node_id="n", heartbeat=Heartbeat(
            node_id="n", memory=MemoryReading(total_gb=8, available_gb=1))),
        model="llama3.1:405b", loaded=None, available=AvailableModel(name="llama3.1:405b"),
        in_flight=0, node_in_flight=0, unloaded_ago=None,
    )
    assert sig.score(ctx(), [c]) == [0]
    assert sig.score(ctx(), [cand(size_gb=0, available_gb=1.0), cand("b", size_gb=0)]) == [0, 0]


def test_unknown_size_borrows_the_largest_size_another_candidate_reports():
    sig = signal()
    blind = cand("blind", size_gb=0, available_gb=24.0)
    scores = sig.score(ctx(), [blind, cand("a", size_gb=5), cand("b", size_gb=20, loaded=True)])
    # blind needs 20 * 1.2 = 24 GB by the largest report: ratio 1.0, fits with nothing spare
    assert scores == [0, 20, 20]
    assert sig.score(ctx(), [blind, cand("a", size_gb=10)]) == [20, 20]  # needs 12 of 24


def test_node_without_memory_sensor_is_neutral():
    assert signal().score(ctx(), [cand(total_gb=0.0, available_gb=0.0)]) == [0]
    assert signal().score(ctx(), [cand(total_gb=0.0, available_gb=0.0, loaded=True)]) == [20]


def test_huge_context_does_not_change_the_fit():
    # the overhead factor stands for the KV cache; context size is scored by its own signal
    sig = signal()
    big = ctx(num_ctx=1_000_000, estimated_tokens=900_000, num_predict=100_000)
    assert sig.score(big, [cand(available_gb=18.0)]) == sig.score(ctx(), [cand(available_gb=18.0)])


def test_single_and_zero_candidates():
    sig = signal()
    assert sig.score(ctx(), [cand(available_gb=24.0)]) == [20]
    assert sig.score(ctx(), []) == []
    assert sig.score(None, [cand(available_gb=24.0)]) == [20]  # needs nothing from the context


def test_points_come_from_fleet_settings():
    sig = signal({"FLEET_SCORE_MEMORY_FIT_MAX": "30", "FLEET_SCORE_MEMORY_OVERHEAD": "1.0",
                  "FLEET_SCORE_MEMORY_FIT_COMFORT": "3", "FLEET_SCORE_MEMORY_FIT_SHORT_PENALTY": "-5"})
    assert (sig.low, sig.high) == (-5, 30)
    # need = 10 GB: ratio 2 is half way between 1 and 3
    assert sig.score(ctx(), [cand(available_gb=20.0), cand(available_gb=9.0),
                             cand(available_gb=30.0)]) == pytest.approx([15, -5, 30])


def test_comfort_at_or_below_one_is_a_step():
    sig = signal({"FLEET_SCORE_MEMORY_FIT_COMFORT": "1"})
    assert sig.score(ctx(), [cand(available_gb=12.0), cand(available_gb=11.0)]) == [20, -40]


def test_ranking_with_thermal():
    host = make_host("signal-thermal,signal-memory-fit")
    config = make_config(host)
    signals = host.signals(config)
    assert {s.name for s in signals} == {"thermal", "memory-fit"}
    fleet = [
        cand("hot", loaded=True, available_gb=2.0),  # 50 + 20
        cand("roomy-cold", available_gb=64.0),  # 10 + 20
        cand("warm-tight", available_gb=8.0, unloaded_ago=60),  # 30 - 40: would evict
        cand("warm-snug", available_gb=18.0, unloaded_ago=60),  # 30 + 10
    ]
    totals = [0.0] * len(fleet)
    for s in signals:
        for i, v in enumerate(s.score(ctx(config), fleet)):
            totals[i] += min(s.high, max(s.low, v)) * s.weight
    assert totals == pytest.approx([70, 30, -10, 40])
    # a warm node that would have to evict loses even to a cold node with room
    assert sorted(range(4), key=lambda i: -totals[i]) == [0, 3, 1, 2]


def test_registered_through_entry_point():
    host = make_host("signal-memory-fit")
    assert [p.name for p in host.loaded] == ["signal-memory-fit"]
    assert {s.env for s in host.settings()} == {s.env for s in herd_signal_memory_fit.SETTINGS}
