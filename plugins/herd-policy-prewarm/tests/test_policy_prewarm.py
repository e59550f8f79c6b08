"""The pre-warm policy with no server: a fake queue that records what the policy asks."""

from __future__ import annotations

import collections

from herd_policy_prewarm import Prewarm

from herd_kernel.fleet import Fleet
from herd_kernel.models import Heartbeat, RouteRequest, structure
from herd_kernel.scoring import Decision, NoRoute
from herd_kernel.testing import heartbeat_payload, make_config, make_host

EMBED = {"name": "e", "capabilities": ["embedding"]}


def nodes():
    fleet = Fleet()
    for body in (heartbeat_payload("busy", loaded=("m", EMBED)),
                 heartbeat_payload("spare", available=("m", EMBED)),
                 heartbeat_payload("hot", loaded=("m",))):
        fleet.apply_heartbeat(structure(body, Heartbeat))
    return fleet.nodes


NODES = nodes()


def decide(node_id, model="m"):
    return Decision(node=NODES[node_id], model=model, model_key=f"{model}:latest", score=1.0,
                    breakdown={})


class FakeLane:
    def __init__(self, node_id="busy", model="m:latest"):
        self.node_id, self.model, self.limit, self.in_flight = node_id, model, 1, 1
        self.waiting, self.state = collections.deque(), {}


class FakeWaiter:
    def __init__(self, lane, model="m", exclude=()):
        self.route = RouteRequest(model=model, api="ollama", path="/api/chat", stream=True)
        self.exclude, self.since, self.lane = set(exclude), 0.0, lane
        self.decision = decide(lane.node_id, model)
        lane.waiting.append(self)


class FakeQueue:
    """Chooses ``runner`` for every question and records what it was asked."""

    def __init__(self, runner):
        self.runner, self.asked, self.warmed = runner, [], []
        self.waiting_lanes = []

    def choose(self, route, model, exclude=(), only=None):
        self.asked.append((model, set(exclude)))
        return self.runner

    def warm(self, decision, *, behind, waiting):
        self.warmed.append((decision.node.node_id, decision.model, behind, waiting))
        return True


def test_reaching_the_depth_warms_the_runner_up_with_the_busy_node_left_out():
    queue, lane, policy = FakeQueue(decide("spare")), FakeLane(), Prewarm(depth=2)
    policy.waiting(queue, FakeWaiter(lane, exclude={"gone"}))
    assert queue.warmed == []  # one waiting: not yet
    policy.waiting(queue, FakeWaiter(lane))
    assert queue.warmed == [("spare", "m", "busy", 2)]
    assert queue.asked == [("m", {"busy"})]
    policy.waiting(queue, FakeWaiter(lane))  # deeper still: the join only acts on crossing
    assert len(queue.warmed) == 1


def test_the_periodic_pass_asks_for_every_line_at_least_as_deep():
    queue, policy = FakeQueue(decide("spare")), Prewarm(depth=2)
    deep, shallow = FakeLane(), FakeLane("hot")
    first = FakeWaiter(deep, exclude={"x"})
    FakeWaiter(deep)
    FakeWaiter(deep)
    FakeWaiter(shallow)
    queue.waiting_lanes = [deep, shallow]
    policy.tick(queue)
    assert queue.warmed == [("spare", "m", "busy", 3)]
    assert queue.asked == [("m", {"x", "busy"})]  # the head's own exclusions count
    assert first.lane is deep


def test_nothing_to_warm_when_the_runner_up_is_hot_missing_or_the_model_embeds():
    for runner, model in ((decide("hot"), "m"), (NoRoute(kind="unavailable", model="m"), "m"),
                          (decide("spare", "e"), "e")):
        queue = FakeQueue(runner)
        Prewarm(depth=1).waiting(queue, FakeWaiter(FakeLane(model=f"{model}:latest"), model))
        assert queue.warmed == [], runner


def test_depth_zero_registers_nothing():
    host = make_host("policy-prewarm")
    assert host.lane_policies(make_config(host, {"FLEET_PREWARM_DEPTH": "0"})) == []
    [policy] = host.lane_policies(make_config(host))
    assert policy.depth == 2
