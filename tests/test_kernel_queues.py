"""The queue manager without sockets: limits, waiting, the pump, the reaper and the tuner."""

from __future__ import annotations

import asyncio
import time

import pytest
from herd_policy_concurrency import ConcurrencyTuner

from herd_kernel.fleet import Fleet
from herd_kernel.latency import LatencyHistory
from herd_kernel.models import Heartbeat, RouteRequest, structure
from herd_kernel.queues import QueueManager, Refused
from herd_kernel.scoring import Decision, NoRoute, Scorer
from herd_kernel.testing import heartbeat_payload, make_config, make_host


class Prefer:
    """A test signal: fixed points per node id."""

    name, weight, low, high = "prefer", 1.0, -100.0, 100.0

    def __init__(self, points):
        self.points = points

    def score(self, ctx, candidates):
        return [self.points.get(c.node_id, 0.0) for c in candidates]


def beat(node_id, *, parallel=0, loaded=("m",), available=(), pressure="normal", **extra):
    body = heartbeat_payload(node_id, loaded=loaded, available=available, **extra)
    body["endpoints"][0]["num_parallel"] = parallel
    body["memory"]["pressure"] = pressure
    return structure(body, Heartbeat)


def manager(*beats, signals=(), env=None, warm=None):
    fleet = Fleet()
    for hb in beats:
        fleet.apply_heartbeat(hb)
    host = make_host("policy-*")  # the lane policies, as the router loads them
    config = make_config(host, env={"FLEET_HOLD_TIMEOUT": "5", **(env or {})})
    scorer = Scorer(fleet, list(signals), config, LatencyHistory())
    return QueueManager(fleet, scorer, config, warm=warm, policies=host.lane_policies(config))


def req(model="m"):
    return RouteRequest(model=model, api="ollama", path="/api/chat", stream=True)


# --- limits ------------------------------------------------------------------------------------


def test_limit_follows_num_parallel_then_the_default_then_the_cap():
    q = manager(beat("a", parallel=4), beat("b"), env={"FLEET_DEFAULT_CONCURRENCY": "2",
                                                        "FLEET_MAX_CONCURRENCY": "3"})
    a, b = q.fleet.nodes["a"], q.fleet.nodes["b"]
    assert q.limit_for(a, q.fleet.lane("a", "m:latest")) == 3  # 4 reported, capped at 3
    assert q.limit_for(b, q.fleet.lane("b", "m:latest")) == 2  # not reported: the default


def test_embedding_models_and_cold_loads_under_pressure_run_one_at_a_time():
    embed = {"name": "e", "capabilities": ["embedding"]}
    q = manager(beat("a", parallel=4, loaded=("m",), available=(embed, "cold")),
                beat("b", parallel=4, loaded=("m",), available=("cold",), pressure="warn"))
    a, b = q.fleet.nodes["a"], q.fleet.nodes["b"]
    assert q.limit_for(a, q.fleet.lane("a", "e:latest")) == 1
    assert q.limit_for(a, q.fleet.lane("a", "cold:latest")) == 4
    assert q.limit_for(b, q.fleet.lane("b", "cold:latest")) == 1  # a cold load, short of memory
    assert q.limit_for(b, q.fleet.lane("b", "m:latest")) == 4  # already loaded: unchanged


def test_a_cold_load_that_barely_fits_in_free_memory_runs_one_at_a_time():
    big = {"name": "big", "size_bytes": 20 * 2**30}
    small = {"name": "small", "size_bytes": 2 * 2**30}
    q = manager(beat("a", parallel=4, loaded=(), available=(big, small), memory_gb=32.0))
    node = q.fleet.nodes["a"]  # 28 GB free: 1.5 x 20 GB does not fit, 1.5 x 2 GB does
    assert q.limit_for(node, q.fleet.lane("a", "big:latest")) == 1
    assert q.limit_for(node, q.fleet.lane("a", "small:latest")) == 4


def test_tuner_caps_a_lane_when_side_by_side_does_not_pay_and_probes_back():
    tuner = ConcurrencyTuner()
    for _ in range(8):
        tuner.observe(1, 10.0)  # 10 ms a token alone
    for _ in range(8):
        tuner.observe(4, 40.0)  # 40 ms a token with 4 running: the same total throughput
    assert tuner.cap == 3
    for _ in range(ConcurrencyTuner.PROBE_AFTER):
        tuner.observe(1, 10.0)
    assert tuner.cap == 4  # looks again


def test_tuner_leaves_a_lane_alone_when_parallelism_pays():
    tuner = ConcurrencyTuner()
    for _ in range(20):
        tuner.observe(1, 10.0)
        tuner.observe(4, 12.0)  # 4 at once, each a little slower: 3.3x the throughput
    assert tuner.cap is None and tuner.gain() == pytest.approx(3.333, abs=0.01)


def test_a_learned_cap_lowers_the_limit():
    q = manager(beat("a", parallel=4))
    lane = q.fleet.lane("a", "m:latest")
    lane.state["concurrency"] = ConcurrencyTuner()
    lane.state["concurrency"].cap = 2
    assert q.limit_for(q.fleet.nodes["a"], lane) == 2


# --- waiting -----------------------------------------------------------------------------------


async def test_fast_path_grants_at_once_and_release_is_idempotent():
    q = manager(beat("a", parallel=2))
    decision, slot = await q.acquire(req())
    assert isinstance(decision, Decision) and slot.lane.in_flight == 1
    slot.release(True, completion_tokens=20)
    slot.release(True)
    assert (slot.lane.in_flight, slot.lane.completed) == (0, 1)


async def test_waiters_are_served_in_arrival_order():
    q = manager(beat("a", parallel=1))
    _, first = await q.acquire(req())
    order = []

    async def one(tag):
        _, slot = await q.acquire(req())
        order.append(tag)
        await asyncio.sleep(0)
        slot.release(True)

    tasks = [asyncio.create_task(one(i)) for i in range(5)]
    await asyncio.sleep(0.01)
    assert q.waiting_total == 5 and q.fleet.lane("a", "m:latest").pending == 5
    first.release(True)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert q.fleet.lane("a", "m:latest").completed == 6


async def test_a_waiter_whose_client_left_is_dropped_not_dispatched():
    q = manager(beat("a", parallel=1))
    _, first = await q.acquire(req())
    alive = {"gone": False}
    waiter = asyncio.create_task(q.acquire(req(), alive=lambda: not alive["gone"]))
    await asyncio.sleep(0.01)
    alive["gone"] = True
    first.release(True)
    result = await waiter
    assert isinstance(result, Refused) and result.kind == "gone"
    lane = q.fleet.lane("a", "m:latest")
    assert (lane.in_flight, lane.abandoned) == (0, 1)


async def test_hold_timeout_zero_waits_without_limit_and_max_queue_zero_never_waits():
    q = manager(beat("a", parallel=1), env={"FLEET_HOLD_TIMEOUT": "0"})
    _, first = await q.acquire(req())
    waiter = asyncio.create_task(q.acquire(req()))
    await asyncio.sleep(0.05)  # longer than any limit the other tests set: it still waits
    assert not waiter.done() and q.waiting_total == 1
    first.release(True)
    _, second = await waiter
    second.release(True)
    never = manager(beat("a", parallel=1), env={"FLEET_MAX_QUEUE": "0"})
    await never.acquire(req())
    result = await never.acquire(req())
    assert isinstance(result, Refused) and result.kind == "full" and result.waited_s == 0


async def test_a_full_queue_refuses_at_once():
    q = manager(beat("a", parallel=1), env={"FLEET_MAX_QUEUE": "2"})
    _, slot = await q.acquire(req())
    waiters = [asyncio.create_task(q.acquire(req())) for _ in range(2)]
    await asyncio.sleep(0.01)
    refused = await q.acquire(req())
    assert isinstance(refused, Refused) and refused.kind == "full" and q.full_total == 1
    assert q.waiting_total == 2  # the two already waiting keep their places
    slot.release(True)
    for task in waiters:
        _, s = await task
        s.release(True)


async def test_hold_timeout_refuses_and_leaves_the_queue_clean():
    q = manager(beat("a", parallel=1), env={"FLEET_HOLD_TIMEOUT": "0.05"})
    await q.acquire(req())
    result = await q.acquire(req())
    assert isinstance(result, Refused) and "busy" in result.reason
    assert q.waiting_total == 0 and not q.waiting_lanes and q.timeouts_total == 1


async def test_unknown_model_and_exhausted_retries_do_not_wait():
    q = manager(beat("a", parallel=1))
    assert isinstance(await q.acquire(req("nowhere")), NoRoute)
    result = await q.acquire(req(), exclude={"a"})  # every holder already failed this request
    assert isinstance(result, NoRoute) and result.kind == "unavailable"


async def test_held_requests_are_rescored_when_the_fleet_changes():
    q = manager(beat("a", parallel=1))
    q.fleet.nodes["a"].status = "offline"
    waiter = asyncio.create_task(q.acquire(req()))
    await asyncio.sleep(0.01)
    assert len(q.held) == 1
    q.fleet.apply_heartbeat(beat("a", parallel=1))  # back online: the pump runs at once
    decision, slot = await asyncio.wait_for(waiter, 1)
    assert decision.node.node_id == "a" and not q.held
    slot.release(True)


async def test_waiters_of_a_node_that_leaves_are_rescored_elsewhere():
    q = manager(beat("a", parallel=1), beat("b", parallel=1), signals=[Prefer({"a": 50})])
    _, on_a = await q.acquire(req())
    waiter = asyncio.create_task(q.acquire(req()))  # a stays the best choice: it waits there
    await asyncio.sleep(0.01)
    assert on_a.lane.node_id == "a" and q.fleet.lane("a", "m:latest").pending == 1
    q.fleet.apply_heartbeat(beat("a", parallel=1, draining=True))
    decision, slot = await asyncio.wait_for(waiter, 1)
    assert decision.node.node_id == "b" and q.waiting_total == 0
    slot.release(True)
    on_a.release(True)


async def test_the_rebalancer_moves_the_oldest_waiter_to_a_hot_free_node():
    q = manager(beat("a", parallel=1), beat("b", parallel=1, loaded=(), available=("m",)),
                signals=[Prefer({"a": 50})])
    _, busy = await q.acquire(req())
    waiter = asyncio.create_task(q.acquire(req()))
    await asyncio.sleep(0.01)
    assert q.fleet.lane("a", "m:latest").pending == 1  # b is cold: not a target yet
    q.fleet.add_loaded("b", "m:latest")  # e.g. a pre-warm finished
    decision, slot = await asyncio.wait_for(waiter, 1)
    assert decision.node.node_id == "b" and decision.breakdown == {"prefer": 0}
    assert q.fleet.lane("a", "m:latest").moved == 1 and q.moved_total == 1
    busy.release(True)
    slot.release(True)


async def test_a_deep_queue_prewarms_the_runner_up_once():
    warmed = []

    async def warm(node, model):
        warmed.append((node.node_id, model))
        return None

    q = manager(beat("a", parallel=1), beat("b", parallel=1, loaded=(), available=("m",)),
                beat("c", parallel=1, loaded=(), available=("m",)),
                signals=[Prefer({"a": 50, "b": 10})], env={"FLEET_PREWARM_DEPTH": "2"},
                warm=warm)
    _, busy = await q.acquire(req())

    async def one():
        decision, slot = await q.acquire(req())
        await asyncio.sleep(0.01)
        slot.release(True)
        return decision.node.node_id

    waiters = [asyncio.create_task(one()) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert warmed == [("b", "m")] and q.prewarms_total == 1
    busy.release(True)
    served = await asyncio.gather(*waiters)
    assert "b" in served  # b counts as loaded now: the rebalancer moved waiters there
    assert q.moved_total >= 1


async def test_embedding_models_are_not_prewarmed():
    warmed = []

    async def warm(node, model):
        warmed.append(node.node_id)
        return None

    embed = {"name": "e", "capabilities": ["embedding"]}
    q = manager(beat("a", parallel=1, loaded=(embed,)), beat("b", parallel=1, loaded=(), available=(embed,)),
                signals=[Prefer({"a": 50})], env={"FLEET_PREWARM_DEPTH": "1"}, warm=warm)
    _, busy = await q.acquire(req("e"))
    waiter = asyncio.create_task(q.acquire(req("e")))
    await asyncio.sleep(0.02)
    assert q.fleet.lane("a", "e:latest").pending == 1 and warmed == [] and q.prewarms_total == 0
    busy.release(True)
    _, slot = await waiter
    slot.release(True)


async def test_the_reaper_frees_a_slot_with_no_progress_and_cancels_its_task():
    q = manager(beat("a", parallel=1), env={"FLEET_STALE_TIMEOUT": "0.01"})

    async def stuck():
        _, slot = await q.acquire(req())
        slot.task = asyncio.current_task()
        await asyncio.sleep(3600)

    task = asyncio.create_task(stuck())
    await asyncio.sleep(0.05)
    q.tick()
    with pytest.raises(asyncio.CancelledError):
        await task
    lane = q.fleet.lane("a", "m:latest")
    assert (lane.in_flight, lane.reaped, lane.failed, q.reaped_total) == (0, 1, 1, 1)


async def test_a_touched_slot_is_not_reaped():
    q = manager(beat("a", parallel=1), env={"FLEET_STALE_TIMEOUT": "0.05"})
    _, slot = await q.acquire(req())
    slot.progress = time.monotonic() - 0.01
    q.tick()
    assert not slot.reaped and slot.lane.in_flight == 1


# --- reading -----------------------------------------------------------------------------------


async def test_snapshot_and_retry_after_use_the_lane_history():
    q = manager(beat("a", parallel=1))
    latency = q.scorer.latency
    for _ in range(4):
        latency.record("a", "m:latest", 2000.0)
    _, slot = await q.acquire(req())
    waiters = [asyncio.create_task(q.acquire(req())) for _ in range(2)]
    await asyncio.sleep(0.01)
    snap = q.snapshot(latency)
    lane = snap["queues"]["a:m:latest"]
    assert (lane["limit"], lane["in_flight"], lane["pending"]) == (1, 1, 2)
    assert lane["estimated_wait_s"] == 6.0  # two ahead plus the running one, 2 s each
    assert snap["models"]["m:latest"] == {"in_flight": 1, "pending": 2, "slots_free": 0,
                                          "estimated_wait_s": 6.0}
    assert q.retry_after("m") == 6
    slot.release(True)
    for task in waiters:
        _, s = await task
        s.release(True)
