"""The preferred-nodes formula, with no server: build the signal the way the router does (through
the installed entry point) and score hand-made candidates."""

import herd_signal_example

from herd_kernel.api import Candidate
from herd_kernel.models import AvailableModel, Heartbeat, NodeState
from herd_kernel.testing import load_signal, make_host


def cand(node):
    return Candidate(
        node=NodeState(node_id=node, heartbeat=Heartbeat(node_id=node)),
        model="m:latest",
        loaded=None,
        available=AvailableModel(name="m"),
        in_flight=0,
        node_in_flight=0,
        unloaded_ago=None,
    )


def signal(env=None):
    return load_signal("signal-example", env)


def test_listed_nodes_get_the_default_points():
    sig = signal({"FLEET_SCORE_PREFER_NODES": "studio"})
    assert sig.name == "preferred-nodes"
    assert sig.score(None, [cand("studio"), cand("laptop")]) == [25, 0]


def test_empty_setting_prefers_no_one():
    assert signal().score(None, [cand("studio"), cand("laptop")]) == [0, 0]
    assert signal({"FLEET_SCORE_PREFER_NODES": " , ,"}).score(None, [cand("studio")]) == [0]


def test_unknown_node_in_the_list_changes_nothing():
    sig = signal({"FLEET_SCORE_PREFER_NODES": "gone-for-repair,studio"})
    assert sig.score(None, [cand("studio"), cand("laptop")]) == [25, 0]


def test_whitespace_around_ids_is_ignored_but_ids_match_exactly():
    sig = signal({"FLEET_SCORE_PREFER_NODES": "  studio ,\tmini  ,"})
    assert sig.nodes == {"studio", "mini"}
    assert sig.score(None, [cand("studio"), cand("mini"), cand("Studio"), cand("stud")]) == [
        25,
        25,
        0,
        0,
    ]


def test_custom_points_set_the_range_the_kernel_clamps_to():
    sig = signal({"FLEET_SCORE_PREFER_NODES": "studio", "FLEET_SCORE_PREFER_POINTS": "100"})
    assert sig.score(None, [cand("studio"), cand("laptop")]) == [100, 0]
    assert (sig.low, sig.high) == (0, 100)


def test_negative_points_push_listed_nodes_away():
    sig = signal({"FLEET_SCORE_PREFER_NODES": "laptop", "FLEET_SCORE_PREFER_POINTS": "-40"})
    assert sig.score(None, [cand("studio"), cand("laptop")]) == [0, -40]
    assert (sig.low, sig.high) == (-40, 0)


def test_no_candidates_no_scores():
    assert signal({"FLEET_SCORE_PREFER_NODES": "studio"}).score(None, []) == []


def test_parse_nodes_drops_blanks():
    assert herd_signal_example.parse_nodes("") == frozenset()
    assert herd_signal_example.parse_nodes("a, b,,c ") == {"a", "b", "c"}


def test_registered_through_entry_point():
    host = make_host("signal-example")
    assert [p.name for p in host.loaded] == ["signal-example"]
    assert {s.env for s in host.settings()} == {s.env for s in herd_signal_example.SETTINGS}
