"""The rebalancer with no server: fake lanes and a fake queue that applies the moves."""

from __future__ import annotations

import collections

from herd_policy_rebalance import Rebalance, oldest_movable

from herd_kernel.fleet import Fleet
from herd_kernel.models import Heartbeat, RouteRequest, structure
from herd_kernel.scoring import Decision, NoRoute
from herd_kernel.testing import heartbeat_payload, make_config, make_host


def fleet_nodes(**loaded):
    fleet = Fleet()
    for node_id, models in loaded.items():
        fleet.apply_heartbeat(structure(heartbeat_payload(node_id, loaded=models,
                                                          available=("m",)), Heartbeat))
    return fleet.nodes


class FakeLane:
    def __init__(self, node_id, model="m:latest", limit=1, in_flight=0):
        self.node_id, self.model, self.limit, self.in_flight = node_id, model, limit, in_flight
        self.waiting, self.state = collections.deque(), {}


class FakeWaiter:
    def __init__(self, lane, since, exclude=()):
        self.route = RouteRequest(model="m", api="ollama", path="/api/chat", stream=True)
        self.lane, self.since, self.exclude = lane, since, set(exclude)
        self.decision = None
        lane.waiting.append(self)


class FakeQueue:
    def __init__(self, nodes, lanes, *, servable=lambda node: True, refuse=()):
        self.nodes, self.lanes = nodes, {(lane.node_id, lane.model): lane for lane in lanes}
        self._servable, self.refuse, self.moves = servable, set(refuse), []
        for lane in lanes:
            for waiter in lane.waiting:
                waiter.decision = self.decide(lane.node_id)

    @property
    def waiting_lanes(self):
        return [lane for lane in self.lanes.values() if lane.waiting]

    def decide(self, node_id):
        return Decision(node=self.nodes[node_id], model="m", model_key="m:latest", score=0.0,
                        breakdown={})

    def lane(self, node_id, model):
        return self.lanes.setdefault((node_id, model), FakeLane(node_id, model, limit=0))

    def servable(self, node):
        return self._servable(node)

    def refresh_limit(self, node, lane):
        lane.limit = lane.limit or 1
        return lane.limit

    def choose(self, route, model, exclude=(), only=None):
        if only in self.refuse:
            return NoRoute(kind="unavailable", model=model)
        return self.decide(only)

    def move(self, waiter, decision):
        waiter.lane.waiting.remove(waiter)
        self.lanes[(decision.node.node_id, "m:latest")].in_flight += 1
        self.moves.append((waiter.since, waiter.lane.node_id, decision.node.node_id))


def test_waiters_move_oldest_first_to_hot_nodes_with_free_slots():
    nodes = fleet_nodes(a=("m",), b=("m",), hot=("m",), cold=())
    a, b = FakeLane("a", in_flight=1), FakeLane("b", in_flight=1)
    hot = FakeLane("hot", limit=2)
    for since in (3.0, 5.0):
        FakeWaiter(a, since)
    FakeWaiter(b, 1.0)
    FakeWaiter(b, 4.0)
    queue = FakeQueue(nodes, [a, b, hot])
    Rebalance().pump(queue)
    # two free slots on the hot node; the cold node is no target
    assert queue.moves == [(1.0, "b", "hot"), (3.0, "a", "hot")]
    assert [w.since for w in a.waiting] == [5.0] and [w.since for w in b.waiting] == [4.0]


def test_nothing_moves_from_a_lane_with_free_slots_to_a_lane_with_a_line_or_a_failed_node():
    nodes = fleet_nodes(a=("m",), b=("m",), c=("m",))
    not_full = FakeLane("a", limit=2, in_flight=1)
    FakeWaiter(not_full, 1.0)
    full = FakeLane("b", in_flight=1)
    FakeWaiter(full, 2.0, exclude={"c"})  # it already failed on c
    queue = FakeQueue(nodes, [not_full, full, FakeLane("c", limit=3)])
    Rebalance().pump(queue)
    assert queue.moves == []
    assert oldest_movable([not_full, full], "a") is full.waiting[0]


def test_an_unservable_node_or_a_refused_score_takes_nothing():
    nodes = fleet_nodes(a=("m",), b=("m",))
    for servable, refuse in ((lambda node: node.node_id != "b", ()), (lambda node: True, {"b"})):
        full = FakeLane("a", in_flight=1)
        FakeWaiter(full, 1.0)
        queue = FakeQueue(nodes, [full, FakeLane("b", limit=2)], servable=servable,
                          refuse=refuse)
        Rebalance().pump(queue)
        assert queue.moves == [] and len(full.waiting) == 1


def test_the_plugin_registers_one_rebalancer():
    host = make_host("policy-rebalance")
    [policy] = host.lane_policies(make_config(host))
    assert policy.name == "rebalance" and not hasattr(policy, "tick")
