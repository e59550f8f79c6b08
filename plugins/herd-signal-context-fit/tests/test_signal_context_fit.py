"""The context-fit formula at its edges, with no server: the signal is built through its installed
entry point and scores hand-made candidates; the ranking tests run the kernel's Scorer with
thermal beside it."""

import math

import herd_signal_context_fit
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


def cand(node="n", loaded_ctx=None, trained_ctx=0, size_bytes=0, available_gb=24.0):
    """Model m on a node: loaded with ``loaded_ctx`` (None: only on disk), trained for
    ``trained_ctx`` (0: unknown)."""
    heartbeat = Heartbeat(
        node_id=node,
        memory=MemoryReading(total_gb=32.0, used_gb=32.0 - available_gb, available_gb=available_gb),
    )
    return Candidate(
        node=NodeState(node_id=node, heartbeat=heartbeat),
        model="m:latest",
        loaded=None
        if loaded_ctx is None
        else LoadedModel(name="m", context_length=loaded_ctx, size_bytes=size_bytes),
        available=AvailableModel(name="m", context_length=trained_ctx, size_bytes=size_bytes),
        in_flight=0,
        pending=0,
        node_in_flight=0,
        unloaded_ago=None,
    )


def signal(env=None):
    return load_signal("signal-context-fit", env)


def ctx(tokens=0, num_ctx=None, num_predict=None):
    host = make_host("signal-context-fit")
    return ScoringContext(
        request=RouteRequest(
            model="m",
            api="ollama",
            path="/api/chat",
            stream=True,
            estimated_tokens=tokens,
            num_ctx=num_ctx,
            num_predict=num_predict,
        ),
        model="m:latest",
        now=0.0,
        config=make_config(host),
        latency=LatencyHistory(),
    )


def one(sig, candidate, **request):
    [value] = sig.score(ctx(**request), [candidate])
    return value


def test_defaults_and_range():
    sig = signal()
    assert sig.name == "context-fit"
    assert (sig.weight, sig.low, sig.high) == (1.0, -15.0, 15.0)
    assert (sig.output_reserve, sig.reload_penalty) == (512, -10.0)


# --- the need ----------------------------------------------------------------------------------


def need(**request):
    return herd_signal_context_fit.tokens_needed(ctx(**request).request, 512)


def test_need_is_prompt_plus_answer_and_at_least_num_ctx():
    assert need(tokens=1000) == 1512  # the default answer reserve
    assert need(tokens=1000, num_predict=200) == 1200
    assert need(tokens=1000, num_ctx=8192) == 8192
    assert need(tokens=10_000, num_ctx=8192) == 10_512
    assert need() == 512  # no prompt estimate: the answer still needs room


@pytest.mark.parametrize("num_predict", [None, 0, -1, -2, True])
def test_unset_or_special_num_predict_uses_the_reserve(num_predict):
    # -1 (infinite) and -2 (fill the context) give no budget to plan with
    assert need(tokens=1000, num_predict=num_predict) == 1512


@pytest.mark.parametrize("num_ctx", [None, 0, -4096, True])
def test_non_positive_num_ctx_counts_as_unset(num_ctx):
    assert need(tokens=1000, num_ctx=num_ctx) == 1512
    # and never triggers the reload rule
    assert one(signal(), cand(loaded_ctx=4096), tokens=1000, num_ctx=num_ctx) == pytest.approx(15)


def test_need_of_zero_is_neutral():
    sig = signal({"FLEET_SCORE_CONTEXT_OUTPUT_RESERVE": "0"})
    assert sig.score(ctx(), [cand(loaded_ctx=2048), cand(trained_ctx=1)]) == [0, 0]
    # a negative reserve is read as 0, not subtracted from the prompt
    assert signal({"FLEET_SCORE_CONTEXT_OUTPUT_RESERVE": "-600"}).output_reserve == 0


# --- loaded --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loaded_ctx", "points"),
    [
        (1000, -15),  # ratio 0.5: would truncate
        (1999, -15),  # just below the need
        (2000, 0),  # exactly the need: fits, no headroom
        (3000, 7.5),  # ratio 1.5: halfway
        (4000, 15),  # ratio 2: full points
        (128_000, 15),  # more headroom buys nothing more
    ],
)
def test_loaded_context_against_the_need(loaded_ctx, points):
    assert one(signal(), cand(loaded_ctx=loaded_ctx), tokens=1488) == pytest.approx(points)


def test_num_ctx_different_from_a_smaller_loaded_context_costs_a_reload():
    assert one(signal(), cand(loaded_ctx=8192), tokens=100, num_ctx=16384) == -10
    # the prompt alone outgrows the loaded context while num_ctx is smaller: a reload either way
    assert one(signal(), cand(loaded_ctx=8192), tokens=9000, num_ctx=4096) == -10


def test_num_ctx_different_from_a_larger_loaded_context_is_neutral():
    # context protection will strip num_ctx rather than let Ollama reload
    assert one(signal(), cand(loaded_ctx=32768), tokens=100, num_ctx=4096) == 0
    assert one(signal(), cand(loaded_ctx=4096), tokens=100, num_ctx=2048) == 0


def test_num_ctx_equal_to_the_loaded_context_uses_the_ratio():
    assert one(signal(), cand(loaded_ctx=8192), tokens=100, num_ctx=8192) == 0  # ratio 1
    assert one(signal(), cand(loaded_ctx=8192), tokens=9000, num_ctx=8192) == -15  # truncates


def test_huge_context_request():
    huge = {"tokens": 1_000_000, "num_ctx": 1_048_576}
    assert one(signal(), cand(loaded_ctx=131_072), **huge) == -10  # reload, and it still won't fit
    assert one(signal(), cand(loaded_ctx=131_072), tokens=1_000_000) == -15
    assert one(signal(), cand(trained_ctx=131_072), **huge) == -15
    assert one(signal(), cand(trained_ctx=2_097_152), **huge) == 0


def test_unknown_loaded_context_is_neutral():
    assert one(signal(), cand(loaded_ctx=0), tokens=100) == 0
    assert one(signal(), cand(loaded_ctx=0, trained_ctx=512), tokens=100_000, num_ctx=8192) == 0


# --- not loaded ----------------------------------------------------------------------------------


def test_not_loaded_is_neutral_unless_the_model_cannot_hold_the_request():
    assert one(signal(), cand(trained_ctx=0), tokens=100_000) == 0  # unknown training context
    assert one(signal(), cand(trained_ctx=131_072), tokens=100_000) == 0
    assert one(signal(), cand(trained_ctx=8192), tokens=100_000) == -15
    assert one(signal(), cand(trained_ctx=8192), tokens=7680) == 0  # 7680 + 512 fits exactly


# --- what it ignores, and the edges -------------------------------------------------------------


def test_no_history_unknown_size_and_full_memory_do_not_matter():
    # the latency history is empty and the size unreported: neither is read
    plain = signal().score(ctx(tokens=1488), [cand(loaded_ctx=3000), cand(trained_ctx=1000)])
    full = signal().score(
        ctx(tokens=1488),
        [cand(loaded_ctx=3000, available_gb=0.0, size_bytes=40 << 30), cand(trained_ctx=1000)],
    )
    assert plain == full == pytest.approx([7.5, -15])


def test_single_candidate_and_no_candidates():
    assert signal().score(ctx(tokens=100), [cand(loaded_ctx=4096)]) == [15]
    assert signal().score(ctx(tokens=100), []) == []
    assert signal().score(None, [cand(loaded_ctx=4096)]) == [0]  # no request, no judgement


def test_settings_change_points_reserve_and_penalty():
    sig = signal(
        {
            "FLEET_SCORE_CONTEXT_FIT_MAX": "30",
            "FLEET_SCORE_CONTEXT_OUTPUT_RESERVE": "1000",
            "FLEET_SCORE_CONTEXT_RELOAD_PENALTY": "-40",
        }
    )
    assert (sig.low, sig.high) == (-40, 30)
    assert one(sig, cand(loaded_ctx=3000), tokens=1000) == pytest.approx(15)  # need 2000, ratio 1.5
    assert one(sig, cand(loaded_ctx=2048), tokens=100, num_ctx=4096) == -40
    # a small penalty stays inside the range the kernel clamps to
    assert signal({"FLEET_SCORE_CONTEXT_RELOAD_PENALTY": "-5"}).low == -15


def test_every_value_lies_in_the_declared_range():
    sig = signal()
    candidates = [cand(loaded_ctx=n) for n in (0, 1, 512, 2048, 8192, 10**7)]
    candidates += [cand(trained_ctx=n) for n in (0, 1, 8192, 10**7)]
    for request in (
        {"tokens": 0},
        {"tokens": 5000},
        {"tokens": 5000, "num_ctx": 4096},
        {"tokens": 10**8, "num_predict": 10**6},
    ):
        for value in sig.score(ctx(**request), candidates):
            assert sig.low <= value <= sig.high and math.isfinite(value)


def test_registered_through_entry_point():
    host = make_host("signal-context-fit")
    assert [p.name for p in host.loaded] == ["signal-context-fit"]
    assert {s.env for s in host.settings()} == {s.env for s in herd_signal_context_fit.SETTINGS}


# --- the ranking effect, through the kernel's Scorer with thermal beside it ----------------------


def decide(nodes, **request):
    """Route one request for m across ``nodes`` = [(node_id, loaded context or None)]."""
    fleet = Fleet()
    for node_id, loaded_ctx in nodes:
        if loaded_ctx is None:
            body = heartbeat_payload(node_id, available=[{"name": "m", "context_length": 131_072}])
        else:
            body = heartbeat_payload(node_id, loaded=[{"name": "m", "context_length": loaded_ctx}])
        fleet.apply_heartbeat(structure(body, Heartbeat))
    host = make_host("signal-thermal,signal-context-fit")
    config = make_config(host)
    route = RouteRequest(model="m", api="ollama", path="/api/chat", stream=True, **request)
    decision = Scorer(fleet, host.signals(config), config).choose(route)
    assert isinstance(decision, Decision)
    return decision


def test_with_thermal_among_hot_nodes_the_one_whose_context_fits_wins():
    decision = decide([("a-short", 4096), ("b-long", 32768)], estimated_tokens=6000)
    assert decision.node.node_id == "b-long"
    assert decision.breakdown == {"thermal": 50, "context-fit": 15}


def test_with_thermal_a_hot_node_forced_to_reload_drops_between_hot_and_warm():
    # num_ctx 16384 against a resident 8192 costs a reload: 50 - 10 = 40, below a hot node that
    # needs none (50 + 0 at ratio 1) but above a warm (30) or cold (10) one
    decision = decide(
        [("a-8k", 8192), ("b-16k", 16384), ("c-cold", None)], estimated_tokens=100, num_ctx=16384
    )
    assert decision.node.node_id == "b-16k"
    decision = decide([("a-8k", 8192), ("c-cold", None)], estimated_tokens=100, num_ctx=16384)
    assert decision.node.node_id == "a-8k"
    assert decision.breakdown == {"thermal": 50, "context-fit": -10}


def test_with_thermal_a_cold_node_does_not_overtake_a_hot_one_that_would_truncate():
    # 50 - 15 = 35 against 10 + 0: context fit orders hot nodes, it does not undo thermal
    decision = decide([("a-hot", 2048), ("b-cold", None)], estimated_tokens=6000)
    assert decision.node.node_id == "a-hot"
    assert decision.breakdown == {"thermal": 50, "context-fit": -15}
