import pytest

from herd_kernel.fleet import Fleet
from herd_kernel.models import Heartbeat, RouteRequest, structure
from herd_kernel.scoring import Decision, NoRoute, Scorer
from herd_kernel.testing import heartbeat_payload, make_config


class Const:
    """A test signal: fixed points per node id."""

    def __init__(self, name, points, weight=1.0, low=-100.0, high=100.0):
        self.name, self.points, self.weight, self.low, self.high = name, points, weight, low, high

    def score(self, ctx, candidates):
        return [self.points.get(c.node_id, 0.0) for c in candidates]


class Broken:
    name, weight, low, high = "broken", 1.0, -10.0, 10.0

    def score(self, ctx, candidates):
        raise RuntimeError("boom")


def fleet_with(*beats):
    fleet = Fleet()
    for body in beats:
        fleet.apply_heartbeat(structure(body, Heartbeat))
    return fleet


def req(model="m", fallbacks=()):
    return RouteRequest(model=model, api="ollama", path="/api/chat", stream=True,
                        fallback_models=tuple(fallbacks))


def test_weighted_sum_picks_best_and_keeps_breakdown():
    fleet = fleet_with(heartbeat_payload("a", available=["m"]), heartbeat_payload("b", available=["m"]))
    scorer = Scorer(fleet, [Const("x", {"a": 10, "b": 5}), Const("y", {"b": 4}, weight=2)], make_config())
    d = scorer.choose(req())
    assert isinstance(d, Decision)
    assert d.node.node_id == "b" and d.score == 13
    assert d.breakdown == {"x": 5, "y": 8}
    assert d.breakdown_header == "x=5;y=8"


def test_values_are_clamped_to_the_signal_range():
    fleet = fleet_with(heartbeat_payload("a", available=["m"]), heartbeat_payload("b", available=["m"]))
    scorer = Scorer(fleet, [Const("x", {"a": 1000, "b": 50}, low=0, high=60)], make_config())
    d = scorer.choose(req())
    assert d.node.node_id == "a" and d.score == 60


def test_elimination_reasons_and_unknown_vs_unavailable():
    fleet = fleet_with(
        heartbeat_payload("off", available=["m"]),
        heartbeat_payload("paused", available=["m"], paused=True),
        heartbeat_payload("other", available=["z"]),
    )
    fleet.nodes["off"].status = "offline"
    scorer = Scorer(fleet, [], make_config())
    result = scorer.choose(req())
    assert isinstance(result, NoRoute) and result.kind == "unavailable"
    assert result.eliminated == {"off": "offline", "paused": "paused"}
    unknown = scorer.choose(req("nope"))
    assert isinstance(unknown, NoRoute) and unknown.kind == "unknown_model"


def test_excluded_nodes_are_skipped():
    fleet = fleet_with(heartbeat_payload("a", available=["m"]), heartbeat_payload("b", available=["m"]))
    scorer = Scorer(fleet, [Const("x", {"a": 10})], make_config())
    d = scorer.choose(req(), exclude={"a"})
    assert d.node.node_id == "b" and d.eliminated == {"a": "failed earlier attempt"}


def test_fallback_model_is_used_when_the_first_has_no_node():
    fleet = fleet_with(heartbeat_payload("a", available=["small"]))
    d = Scorer(fleet, [], make_config()).choose(req("big", fallbacks=["small"]))
    assert isinstance(d, Decision) and d.fallback and d.model == "small"


def test_a_broken_signal_scores_neutral():
    fleet = fleet_with(heartbeat_payload("a", available=["m"]), heartbeat_payload("b", available=["m"]))
    d = Scorer(fleet, [Broken(), Const("x", {"b": 1})], make_config()).choose(req())
    assert d.node.node_id == "b" and d.breakdown == {"broken": 0, "x": 1}


def test_ties_go_to_the_less_busy_node_then_lowest_id():
    fleet = fleet_with(heartbeat_payload("b", available=["m"]), heartbeat_payload("a", available=["m"]))
    scorer = Scorer(fleet, [], make_config())
    assert scorer.choose(req()).node.node_id == "a"
    fleet.started(fleet.lane("a", "m:latest"))
    assert scorer.choose(req()).node.node_id == "b"


@pytest.mark.parametrize("model", ["M", "m:latest", "M:LATEST"])
def test_model_names_match_like_ollama(model):
    fleet = fleet_with(heartbeat_payload("a", available=["m:latest"]))
    assert isinstance(Scorer(fleet, [], make_config()).choose(req(model)), Decision)


def test_shortlist_scores_only_the_best_few_of_a_large_fleet():
    beats = [heartbeat_payload(f"hot{i}", loaded=["m"], memory_gb=16.0 + i) for i in range(8)]
    beats += [heartbeat_payload(f"cold{i}", available=["m"], memory_gb=16.0 + i) for i in range(8)]
    fleet = fleet_with(*beats)
    seen = []

    class Spy(Const):
        def score(self, ctx, candidates):
            seen.append(sorted(c.node_id for c in candidates))
            return super().score(ctx, candidates)

    scorer = Scorer(fleet, [Spy("spy", {"cold7": 100})], make_config(env={"FLEET_SCORE_SHORTLIST": "4"}))
    decision = scorer.choose(req())
    # three places for the hot nodes (most free memory first), one kept for the cold ones, which
    # a signal may well prefer
    assert seen == [["cold7", "hot5", "hot6", "hot7"]]
    assert decision.node.node_id == "cold7"


def test_shortlist_puts_idle_nodes_before_busy_ones():
    fleet = fleet_with(*[heartbeat_payload(f"n{i}", loaded=["m"]) for i in range(6)])
    for i in range(4):
        fleet.started(fleet.lane(f"n{i}", "m:latest"))
    scorer = Scorer(fleet, [], make_config(env={"FLEET_SCORE_SHORTLIST": "2"}))
    assert scorer.choose(req()).node.node_id == "n4"  # n0..n3 are busy; n4 and n5 made the list
