import herd_signal_thermal

from herd_kernel.api import Candidate
from herd_kernel.models import AvailableModel, Heartbeat, LoadedModel, NodeState
from herd_kernel.testing import load_signal, make_host


def cand(loaded=False, available=True, unloaded_ago=None, node="n"):
    return Candidate(
        node=NodeState(node_id=node, heartbeat=Heartbeat(node_id=node)),
        model="m:latest",
        loaded=LoadedModel(name="m") if loaded else None,
        available=AvailableModel(name="m") if available else None,
        in_flight=0,
        node_in_flight=0,
        unloaded_ago=unloaded_ago,
    )


def signal(env=None):
    return load_signal("signal-thermal", env)


def test_hot_warm_cold_defaults():
    sig = signal()
    assert sig.name == "thermal"
    scores = sig.score(None, [cand(loaded=True), cand(unloaded_ago=60), cand(), cand(available=False)])
    assert scores == [50, 30, 10, 0]


def test_warm_window_edges():
    sig = signal()
    assert sig.score(None, [cand(unloaded_ago=1800), cand(unloaded_ago=1800.01)]) == [30, 10]
    assert sig.score(None, [cand(unloaded_ago=0)]) == [30]


def test_weights_come_from_fleet_settings():
    sig = signal({"FLEET_SCORE_MODEL_HOT": "80", "FLEET_SCORE_MODEL_COLD": "1",
                  "FLEET_SCORE_WARM_WINDOW": "10"})
    assert sig.score(None, [cand(loaded=True), cand(unloaded_ago=11), cand(unloaded_ago=5)]) == [80, 1, 30]
    assert sig.high == 80


def test_no_candidates_no_scores():
    assert signal().score(None, []) == []


def test_registered_through_entry_point():
    host = make_host("signal-thermal")
    assert [p.name for p in host.loaded] == ["signal-thermal"]
    assert {s.env for s in host.settings()} == {s.env for s in herd_signal_thermal.SETTINGS}
