from herd_kernel.fleet import Fleet, reachable_url
from herd_kernel.models import Heartbeat, structure
from herd_kernel.testing import heartbeat_payload


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def hb(node_id: str, **kw) -> Heartbeat:
    return structure(heartbeat_payload(node_id, **kw), Heartbeat)


def test_status_ages_from_online_to_degraded_to_offline_and_back():
    clock = Clock()
    fleet = Fleet(degraded_after=15, offline_after=30, clock=clock)
    events = []
    fleet.listeners.append(lambda n, old, new: events.append((n, old, new)))
    fleet.apply_heartbeat(hb("a"))
    clock.now += 14.9
    fleet.sweep()
    assert fleet.nodes["a"].status == "online"
    clock.now += 0.2
    fleet.sweep()
    assert fleet.nodes["a"].status == "degraded"
    assert fleet.nodes["a"].routable  # degraded nodes still serve
    clock.now += 15
    fleet.sweep()
    assert fleet.nodes["a"].status == "offline" and not fleet.nodes["a"].routable
    fleet.apply_heartbeat(hb("a"))
    assert fleet.nodes["a"].status == "online"
    assert events == [("a", None, "online"), ("a", "online", "degraded"),
                      ("a", "degraded", "offline"), ("a", "offline", "online")]


def test_draining_goes_offline_at_once():
    fleet = Fleet()
    fleet.apply_heartbeat(hb("a"))
    fleet.apply_heartbeat(structure({"node_id": "a", "draining": True}, Heartbeat))
    assert fleet.nodes["a"].status == "offline"


def test_unload_is_remembered_for_warmth():
    clock = Clock()
    fleet = Fleet(clock=clock)
    fleet.apply_heartbeat(hb("a", loaded=["m:1"]))
    clock.now += 5
    fleet.apply_heartbeat(hb("a", available=["m:1"]))
    assert fleet.nodes["a"].unloaded_at == {"m:1": 1005.0}
    fleet.apply_heartbeat(hb("a", loaded=["m:1"]))
    assert fleet.nodes["a"].unloaded_at == {}


def test_in_flight_counters_are_true():
    fleet = Fleet()
    lane = fleet.lane("a", "m:latest")
    assert fleet.lane("a", "m:latest") is lane
    fleet.started(lane)
    fleet.started(lane)
    fleet.started(lane)
    assert (lane.in_flight, fleet.requests_active) == (3, 3)
    fleet.finished(lane, ok=True)
    fleet.finished(lane, ok=False)
    fleet.finished(lane, ok=None)  # a slot given back unused counts neither way
    assert (lane.in_flight, lane.completed, lane.failed) == (0, 1, 1)
    assert fleet.requests_active == 0


def test_reachable_url_replaces_loopback_for_remote_peers():
    assert reachable_url("http://localhost:11434", "192.0.2.7") == "http://192.0.2.7:11434"
    assert reachable_url("http://127.0.0.1:11434/", "127.0.0.1") == "http://127.0.0.1:11434"
    assert reachable_url("http://10.1.1.1:11434", "192.0.2.7") == "http://10.1.1.1:11434"
    assert reachable_url("localhost:11434", "2001:db8::1") == "http://[2001:db8::1]:11434"
