"""The wait-time formula at its edges, with no server: the signal is built through its installed
entry point and scores hand-made candidates against a latency history fed by hand."""

import herd_signal_wait_time
import pytest

from herd_kernel.api import Candidate
from herd_kernel.latency import LatencyHistory
from herd_kernel.models import (
    AvailableModel,
    Endpoint,
    Heartbeat,
    LoadedModel,
    NodeState,
)
from herd_kernel.scoring import weighted_totals
from herd_kernel.testing import load_signal, make_config, make_host, scoring_context


def cand(node="n", *, in_flight=0, pending=0, num_parallel=0, loaded=False, unloaded_ago=None):
    report = Endpoint(kind="ollama", url="http://127.0.0.1:11434", num_parallel=num_parallel)
    endpoints = (report,)
    return Candidate(
        node=NodeState(node_id=node, heartbeat=Heartbeat(node_id=node, endpoints=endpoints),
                       endpoints=endpoints, serving={"m:latest": e for e in endpoints}),
        model="m:latest",
        loaded=LoadedModel(name="m") if loaded else None,
        available=AvailableModel(name="m"),
        in_flight=in_flight,
        pending=pending,
        node_in_flight=in_flight,
        unloaded_ago=unloaded_ago,
    )


# The formula tests below were written against these settings (round numbers that make the
# arithmetic readable); the shipped defaults, tuned on bench/routing, are checked separately.
FORMULA_ENV = {"FLEET_SCORE_WAIT_TIME_MAX_PENALTY": "25", "FLEET_SCORE_WAIT_TIME_HALF_S": "30"}


def signal(env=None):
    return load_signal("signal-wait-time", {**FORMULA_ENV, **(env or {})})


def history(**p75_ms):
    """A latency history where node ``name`` has a p75 of exactly the given milliseconds."""
    latency = LatencyHistory()
    for node, ms in p75_ms.items():
        for _ in range(4):
            latency.record(node, "m:latest", ms)
    return latency


def ctx(latency=None, config=None, **request):
    return scoring_context(latency=latency, config=config, **request)


def test_defaults_and_range():
    sig = load_signal("signal-wait-time")  # the shipped defaults (tuned on bench/routing)
    assert sig.name == "wait-time" and sig.weight == 1.0
    assert (sig.low, sig.high) == (-45, 0)
    assert signal().low == -25  # the formula tests' settings


def test_no_history_anywhere_is_neutral():
    assert signal().score(ctx(), [cand(in_flight=3), cand("b", pending=9)]) == [0, 0]


def test_idle_node_waits_for_nothing_however_slow():
    assert signal().score(ctx(history(n=600_000)), [cand()]) == [0]


def test_the_curve():
    sig = signal()
    latency = history(a=30_000, b=10_000, c=3_000_000)
    scores = sig.score(ctx(latency), [
        cand("a", in_flight=1),  # 30 s: half the penalty
        cand("b", in_flight=1, pending=2),  # 3 * 10 s = 30 s: the same
        cand("b", in_flight=9),  # 90 s: 25 * 90 / 120
        cand("c", in_flight=1),  # 3000 s: close to, never past, the maximum
    ])
    assert scores[:3] == pytest.approx([-12.5, -12.5, -18.75])
    assert -25 < scores[3] < -24.7


def test_the_curve_is_monotonic_and_bounded():
    sig = signal()
    latency = history(n=5_000)
    scores = [sig.score(ctx(latency), [cand(in_flight=d)])[0] for d in range(0, 200, 7)]
    assert scores == sorted(scores, reverse=True)
    assert all(-25 < s <= 0 for s in scores)


def test_parallel_slots_divide_the_wait():
    sig = signal()
    latency = history(a=20_000, b=20_000)
    # 4 requests over 4 slots wait one request's time: 20 s -> 25 * 20 / 50 = 10
    assert sig.score(ctx(latency), [cand("a", in_flight=4, num_parallel=4),
                                    cand("b", in_flight=1)]) == pytest.approx([-10, -10])


def test_a_node_without_history_borrows_the_median_of_the_others():
    sig = signal()
    latency = history(a=10_000, b=30_000, c=90_000)
    scores = sig.score(ctx(latency), [cand("new", in_flight=1), cand("a"), cand("b"), cand("c")])
    assert scores == pytest.approx([-12.5, 0, 0, 0])  # the median p75 is 30 s
    # with an even count the median sits between the middle two
    latency = history(a=10_000, b=50_000)
    assert sig.score(ctx(latency), [cand("new", in_flight=1), cand("a"), cand("b")]) == (
        pytest.approx([-12.5, 0, 0]))


def test_history_for_another_model_does_not_count():
    latency = LatencyHistory()
    latency.record("n", "other:latest", 60_000)
    assert signal().score(ctx(latency), [cand(in_flight=2)]) == [0]


def test_settings():
    sig = signal({"FLEET_SCORE_WAIT_TIME_MAX_PENALTY": "40", "FLEET_SCORE_WAIT_TIME_HALF_S": "10"})
    assert sig.low == -40
    assert sig.score(ctx(history(n=10_000)), [cand(in_flight=1)]) == pytest.approx([-20])
    step = signal({"FLEET_SCORE_WAIT_TIME_HALF_S": "0"})
    assert step.score(ctx(history(n=1)), [cand(in_flight=1), cand()]) == [-25, 0]


def test_single_zero_candidates_and_no_context():
    sig = signal()
    assert sig.score(ctx(history(n=30_000)), [cand(in_flight=1)]) == pytest.approx([-12.5])
    assert sig.score(ctx(), []) == []
    assert sig.score(None, [cand(in_flight=1)]) == [0]


def test_huge_context_does_not_change_the_estimate():
    # history is per node and model, not per prompt size: a long prompt is judged by other signals
    sig = signal()
    latency = history(n=30_000)
    big = ctx(latency, num_ctx=1_000_000, estimated_tokens=900_000)
    assert sig.score(big, [cand(in_flight=1)]) == sig.score(ctx(latency), [cand(in_flight=1)])


def totals(signals, context, candidates):
    """Rank as the kernel does (clamp, weight, sum)."""
    return weighted_totals(signals, context, candidates)[0]


def test_ranking_with_thermal():
    host = make_host("signal-thermal,signal-wait-time")
    config = make_config(host, FORMULA_ENV)
    signals = host.signals(config)
    latency = history(slow=120_000, quick=2_000, warm=120_000)
    slow_hot = cand("slow", loaded=True, in_flight=3)  # 360 s ahead: 50 - 23.08
    quick_hot = cand("quick", loaded=True, in_flight=3)  # 6 s ahead: 50 - 4.17
    warm_idle = cand("warm", unloaded_ago=60)  # 30 - 0
    scores = totals(signals, ctx(latency, config), [slow_hot, quick_hot, warm_idle])
    assert scores == pytest.approx([50 - 25 * 360 / 390, 50 - 25 * 6 / 36, 30])
    # a long queue of slow answers sends the request to the idle warm node; quick answers do not
    assert scores[2] > scores[0] and scores[1] > scores[2]


def test_registered_through_entry_point():
    host = make_host("signal-wait-time")
    assert [p.name for p in host.loaded] == ["signal-wait-time"]
    assert {s.env for s in host.settings()} == {s.env for s in herd_signal_wait_time.SETTINGS}
