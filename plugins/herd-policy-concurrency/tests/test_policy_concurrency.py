"""The concurrency policy with no server: fake lanes and slots, nodes from heartbeats."""

from __future__ import annotations

import collections
import time

import pytest
from herd_policy_concurrency import AdaptiveConcurrency, ConcurrencyRules, ConcurrencyTuner

from herd_kernel.fleet import Fleet
from herd_kernel.models import Heartbeat, structure
from herd_kernel.testing import heartbeat_payload, make_config, make_host


class FakeLane:
    def __init__(self, model="m:latest", node_id="a"):
        self.node_id, self.model = node_id, model
        self.limit, self.in_flight = 4, 0
        self.waiting = collections.deque()
        self.state = {}
        self.area = 0.0  # request-seconds, as the kernel's lane integrates them

    @property
    def pending(self):
        return len(self.waiting)

    def busy_integral(self, now):
        return self.area


class FakeSlot:
    """A request that ran ``seconds`` with ``concurrency`` requests in its lane on average."""

    def __init__(self, lane, seconds, concurrency):
        self.lane = lane
        self.started = time.monotonic() - seconds
        self.busy_start = lane.area
        lane.area += seconds * concurrency


def node(*, loaded=("m",), available=(), pressure="normal", memory_gb=32.0):
    body = heartbeat_payload("a", loaded=loaded, available=available, memory_gb=memory_gb)
    body["memory"]["pressure"] = pressure
    fleet = Fleet()
    fleet.apply_heartbeat(structure(body, Heartbeat))
    return fleet.nodes["a"]


def policies(env=None):
    host = make_host("policy-concurrency")
    return host.lane_policies(make_config(host, env))


def test_the_plugin_registers_the_tuner_unless_it_is_turned_off():
    [on] = policies()
    [off] = policies({"FLEET_ADAPTIVE_CONCURRENCY": "false"})
    assert isinstance(on, AdaptiveConcurrency) and callable(on.finished)
    assert type(off) is ConcurrencyRules and not hasattr(off, "finished")  # nothing to feed


def test_embedding_only_models_get_one_slot_and_completion_models_keep_theirs():
    both = {"name": "b", "capabilities": ["embedding", "completion"]}
    embed = {"name": "e", "capabilities": ["embedding"]}
    n = node(loaded=("m", embed, both))
    rules = ConcurrencyRules()
    assert rules.limit(n, FakeLane("e:latest"), 4) == 1
    assert rules.limit(n, FakeLane("b:latest"), 4) == 4
    assert rules.limit(n, FakeLane("m:latest"), 4) == 4


@pytest.mark.parametrize(("pressure", "memory_gb", "size_gb", "expected"), [
    ("normal", 32.0, 2, 4),    # 28 GB free, 3 GB needed: parallel is fine
    ("normal", 32.0, 20, 1),   # 28 GB free, 30 GB needed: one request loads it
    ("warn", 64.0, 1, 1),      # any pressure: one at a time
])
def test_a_cold_load_short_of_memory_runs_one_at_a_time(pressure, memory_gb, size_gb, expected):
    model = {"name": "cold", "size_bytes": size_gb * 2**30}
    n = node(loaded=(), available=(model,), pressure=pressure, memory_gb=memory_gb)
    assert ConcurrencyRules().limit(n, FakeLane("cold:latest"), 4) == expected
    assert ConcurrencyRules().limit(n, FakeLane("cold:latest"), 1) == 1


def test_finished_requests_teach_the_tuner_a_cap_that_lowers_the_limit():
    policy, lane, n = AdaptiveConcurrency(), FakeLane(), node()
    for _ in range(ConcurrencyTuner.MIN_SAMPLES):
        policy.finished(FakeSlot(lane, 1.0, 1.0), True, 100)  # 10 ms a token alone
        policy.finished(FakeSlot(lane, 4.0, 4.0), True, 100)  # 40 ms with 4: no gain at all
    assert lane.state["concurrency"].cap == 3
    assert policy.limit(n, lane, 4) == 3
    assert policy.limit(n, lane, 2) == 2  # a cap never raises a lower limit
    assert policy.describe(lane) == {"throughput_gain": None}  # reset after the change


def test_failed_unused_and_short_requests_teach_nothing():
    policy, lane = AdaptiveConcurrency(), FakeLane()
    policy.finished(FakeSlot(lane, 1.0, 1.0), False, 100)
    policy.finished(FakeSlot(lane, 1.0, 1.0), None, None)
    policy.finished(FakeSlot(lane, 1.0, 1.0), True, 7)
    assert lane.state == {}
    policy.finished(FakeSlot(lane, 1.0, 1.0), True, 8)
    assert lane.state["concurrency"].solo_n == 1


def test_describe_reports_the_measured_gain():
    policy, lane = AdaptiveConcurrency(), FakeLane()
    assert policy.describe(lane) == {"throughput_gain": None}
    policy.finished(FakeSlot(lane, 1.0, 1.0), True, 100)
    policy.finished(FakeSlot(lane, 1.2, 4.0), True, 100)  # 4 at once, each a little slower
    assert policy.describe(lane)["throughput_gain"] == pytest.approx(3.333, abs=0.01)
