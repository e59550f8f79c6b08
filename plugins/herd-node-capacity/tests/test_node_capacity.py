"""The capacity learner with injected times and readings (no server, no psutil), the sensor with
an injected sampler and clocks, one real psutil read, and one real agent against a real router."""

import asyncio
import json
import math
import os
import threading
import time
from types import SimpleNamespace

import herd_node_capacity
import psutil
import pytest
from herd_node_capacity import CapacitySensor, Sample, SystemSampler, state_path
from herd_node_capacity.learner import SLOTS, CapacityLearner, CorruptState, load_of, mode_for
from structlog.testing import capture_logs

from herd_kernel.api import NodeContext
from herd_kernel.config import SettingError
from herd_kernel.models import Heartbeat, structure
from herd_kernel.testing import make_config, make_host, wait_for

MONDAY = 1736121600.0  # 2025-01-06 00:00 UTC, a Monday; tests read times in UTC (gmtime)
HOUR = 3600.0
DAY = 24 * HOUR
WEEK = 7 * DAY
IDLE = (5.0, 30.0)  # cpu%, mem%
BUSY = (90.0, 60.0)


def at(week=0, day=0, hour=0, minute=0):
    return MONDAY + week * WEEK + day * DAY + hour * HOUR + minute * 60


def learner(**kw):
    return CapacityLearner(localtime=time.gmtime, **kw)


def feed(lrn, start, end, pattern, step=300.0):
    t = start
    while t < end:
        lrn.observe(t, *pattern(t))
        t += step


def busy_monday_ten(t):
    tm = time.gmtime(t)
    return BUSY if (tm.tm_wday, tm.tm_hour) == (0, 10) else IDLE


def clone(lrn):
    return CapacityLearner.from_json(lrn.to_json("n", 0.0), localtime=time.gmtime)


def assess_now(lrn, t, reading, total_gb=32.0, **kw):
    """A copy of ``lrn`` that sees ``reading`` for the minute up to ``t``, then assesses."""
    copy = clone(lrn)
    for k in range(12, -1, -1):
        copy.observe(t - 5 * k, *reading)
    return copy.assess(t, total_gb=total_gb, **kw)


@pytest.fixture(scope="module")
def four_weeks():
    lrn = learner()
    feed(lrn, at(0), at(4), busy_monday_ten)
    return lrn


# --- the learner alone ----------------------------------------------------------------------------


def test_slot_is_local_weekday_times_24_plus_hour():
    lrn = learner()
    assert lrn.slot_index(at(0, 0, 0)) == 0
    assert lrn.slot_index(at(0, 0, 10, 59)) == 10
    assert lrn.slot_index(at(0, 6, 23, 59)) == SLOTS - 1
    assert lrn.slot_index(at(3, 2, 5)) == 2 * 24 + 5


def test_new_node_is_routable_and_scored_from_its_current_load():
    for cpu, mem in [(5, 30), (40, 50), (70, 80)]:
        lrn = learner()
        lrn.observe(at(0, 2, 14), cpu, mem)
        report = lrn.assess(at(0, 2, 14), total_gb=32.0)
        assert report["mode"] != "paused"  # no bootstrap exile
        assert report["confidence"] < 0.01
        assert report["availability_score"] == pytest.approx(1 - load_of(cpu, mem), abs=0.01)
        assert report["days_observed"] < 0.01


def test_an_hour_that_is_always_busy_scores_lower_than_a_quiet_one(four_weeks):
    ten = assess_now(four_weeks, at(4, 0, 10, 5), IDLE)
    three = assess_now(four_weeks, at(4, 0, 3, 5), IDLE)
    # same reading now (idle), different history
    assert ten["availability_score"] < three["availability_score"] - 0.2
    assert ten["confidence"] > 0.6 and three["confidence"] > 0.6
    assert three["mode"] == "full"
    assert ten["mode"] in ("learned_medium", "learned_low")
    assert ten["ceiling_gb"] < three["ceiling_gb"]
    assert (ten["slot"], three["slot"]) == (10, 3)


def test_what_the_owner_does_now_is_never_outvoted_by_history(four_weeks):
    quiet_hour_busy_now = assess_now(four_weeks, at(4, 0, 3, 5), BUSY)
    quiet_hour_idle_now = assess_now(four_weeks, at(4, 0, 3, 5), IDLE)
    assert quiet_hour_busy_now["availability_score"] < 0.6
    assert quiet_hour_busy_now["availability_score"] < quiet_hour_idle_now["availability_score"]


def test_trend_is_positive_when_the_next_hour_is_usually_quieter(four_weeks):
    busy_now = assess_now(four_weeks, at(4, 0, 10, 30), BUSY)
    assert busy_now["trend"] > 0.4
    # and negative when the owner usually arrives next hour
    before = assess_now(four_weeks, at(4, 0, 9, 30), IDLE)
    assert before["trend"] < -0.4
    # an ordinary quiet hour followed by another: steady
    assert assess_now(four_weeks, at(4, 2, 3, 30), IDLE)["trend"] == pytest.approx(0, abs=0.05)


def test_trend_follows_the_recent_slope_without_history():
    lrn = learner()
    t = at(0, 1, 9)
    for _ in range(60):  # five busy minutes...
        lrn.observe(t, *BUSY)
        t += 5
    for _ in range(24):  # ...then two quiet ones: load is falling
        lrn.observe(t, *IDLE)
        t += 5
    assert lrn.assess(t, total_gb=16)["trend"] > 0.3
    for _ in range(24):  # busy again: rising
        lrn.observe(t, *BUSY)
        t += 5
    assert lrn.assess(t, total_gb=16)["trend"] < 0


def test_state_survives_a_json_round_trip(four_weeks):
    data = four_weeks.to_json("n", at(4))
    text = json.dumps(data)
    back = CapacityLearner.from_json(json.loads(text), localtime=time.gmtime)
    assert back.to_json("n", at(4)) == data
    assert back.days_observed == pytest.approx(28, rel=0.01)
    t = at(4, 0, 10, 5)
    original = assess_now(four_weeks, t, IDLE)
    assert assess_now(back, t, IDLE) == original


def test_size_stays_bounded_after_six_months_of_samples():
    lrn = learner()
    week_end = at(1)
    feed(lrn, at(0), week_end, busy_monday_ten)
    after_a_week = len(json.dumps(lrn.to_json("n", week_end)))
    end = at(0) + 182 * DAY
    feed(lrn, week_end, end, busy_monday_ten)  # 52,416 readings at one per 5 minutes in all
    state = lrn.to_json("n", end)
    after_six_months = len(json.dumps(state))
    assert len(state["slots"]) == SLOTS and all(s is not None for s in state["slots"])
    assert after_six_months < 16_000
    assert after_six_months < 1.5 * after_a_week  # no growth with uptime, only the digits
    assert lrn.days_observed == pytest.approx(182, rel=0.01)
    # decayed weights saturate: one hour a week with a 14-day half-life tends to 1/(1-2^-0.5)
    assert max(s.weight for s in lrn.slots) < 1 / (1 - 2**-0.5) + 1


def test_old_knowledge_fades_with_the_half_life():
    lrn = learner(half_life_days=7)
    feed(lrn, at(0), at(4), busy_monday_ten)
    fresh = lrn.confidence(10, at(4))
    stale = lrn.confidence(10, at(4) + 8 * WEEK)  # machine off for two months
    assert fresh > 0.6 and stale < 0.05
    shorter = learner(half_life_days=1)
    feed(shorter, at(0), at(4), busy_monday_ten)
    assert shorter.confidence(10, at(4)) < fresh


def test_bad_readings_and_backward_clocks_do_not_poison_the_state():
    lrn = learner()
    lrn.observe(at(0, 0, 1), 20, 40)
    lrn.observe(at(0, 0, 1, 1), math.nan, 40)
    lrn.observe(at(0, 0, 1, 2), 20, math.inf)
    lrn.observe(at(0, 0, 0, 50), 250, -3)  # clock went back; values out of range are clamped
    report = lrn.assess(at(0, 0, 1, 2), total_gb=8)
    assert all(math.isfinite(v) for v in report.values() if isinstance(v, float))
    data = lrn.to_json("n", at(0, 0, 1, 2))
    CapacityLearner.from_json(json.loads(json.dumps(data)))  # still a valid state


def test_modes_and_ceilings():
    assert [mode_for(s) for s in (0.0, 0.19, 0.2, 0.4, 0.6, 0.79, 0.8, 1.0)] == [
        "paused", "paused", "learned_low", "learned_medium", "learned_high", "learned_high",
        "full", "full"]
    lrn = learner()
    lrn.observe(at(0), 0, 0)
    assert lrn.assess(at(0), total_gb=64)["ceiling_gb"] == pytest.approx(51.2)
    lrn = learner()
    lrn.observe(at(0), 100, 100)
    report = lrn.assess(at(0), total_gb=64)
    # a learned pause keeps a small positive ceiling: memory-fit reads 0 as "no ceiling"
    assert report["mode"] == "paused" and report["ceiling_gb"] == pytest.approx(3.2)


def test_overrides():
    lrn = learner()
    lrn.observe(at(0), *BUSY)
    full = lrn.assess(at(0), total_gb=64, override="full")
    assert (full["mode"], full["availability_score"], full["ceiling_gb"]) == ("full", 1.0, 51.2)
    paused = learner().assess(at(0), total_gb=64, override="paused")
    assert (paused["mode"], paused["availability_score"], paused["ceiling_gb"]) == (
        "paused", 0.0, 0.0)


@pytest.mark.parametrize("data", [
    None, [], {"format": "other"}, {"format": "herd-node-capacity", "version": 99},
    {"format": "herd-node-capacity", "version": 1, "slots": [None] * 10, "observed_hours": 0},
    {"format": "herd-node-capacity", "version": 1, "slots": [[1, 2, 3]] + [None] * 167,
     "observed_hours": 0},
    {"format": "herd-node-capacity", "version": 1, "slots": [[1, 0, 500, 0, 5, 0]] + [None] * 167,
     "observed_hours": 0},
    {"format": "herd-node-capacity", "version": 1, "slots": [[-1, 0, 5, 0, 5, 0]] + [None] * 167,
     "observed_hours": 0},
    {"format": "herd-node-capacity", "version": 1, "slots": [None] * 168, "observed_hours": "x"},
    {"format": "herd-node-capacity", "version": 1, "slots": [None] * 168, "observed_hours": 1,
     "first_seen": True},
])
def test_corrupt_states_are_refused(data):
    with pytest.raises(CorruptState):
        CapacityLearner.from_json(data)


# --- the sensor, with injected readings and clocks ---------------------------------------------------


class FakeSampler:
    def __init__(self, cpu=10.0, mem=40.0, fleet=0.0, total_gb=32.0):
        self.cpu, self.mem, self.fleet, self.total_gb = cpu, mem, fleet, total_gb
        self.threads = []

    def sample(self):
        self.threads.append(threading.current_thread() is threading.main_thread())
        return Sample(cpu_pct=self.cpu, fleet_cpu_pct=self.fleet, mem_pct=self.mem,
                      total_gb=self.total_gb)


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def sensor_for(tmp_path, **kw):
    kw.setdefault("sampler", FakeSampler())
    kw.setdefault("wall", Clock(at(0, 0, 9)))
    kw.setdefault("monotonic", Clock(1000.0))
    return CapacitySensor(path=state_path(tmp_path, "n"), node_id="n", localtime=time.gmtime, **kw)


async def test_fragment_is_a_valid_heartbeat(tmp_path):
    fragment = await sensor_for(tmp_path).read(None)
    hb = structure({"node_id": "n", **fragment}, Heartbeat)
    capacity = hb.extras["capacity"]
    assert set(capacity) == {"availability_score", "trend", "mode", "ceiling_gb", "confidence",
                             "days_observed", "slot"}
    assert 0 <= capacity["availability_score"] <= 1 and -1 <= capacity["trend"] <= 1
    assert capacity["slot"] == 9 and not hb.paused


async def test_override_paused_pauses_the_node(tmp_path):
    fragment = await sensor_for(tmp_path, override="paused").read(None)
    hb = structure({"node_id": "n", **fragment}, Heartbeat)
    assert hb.paused is True and hb.extras["capacity"]["mode"] == "paused"
    full = await sensor_for(tmp_path, override="full").read(None)
    assert "paused" not in full and full["extras"]["capacity"]["mode"] == "full"


def test_an_unknown_override_is_a_setting_error(tmp_path):
    host = make_host("node-capacity")
    config = make_config(host, {"FLEET_NODE_DATA_DIR": str(tmp_path),
                                "FLEET_NODE_CAPACITY_OVERRIDE": "pause"})
    with pytest.raises(SettingError, match="FLEET_NODE_CAPACITY_OVERRIDE"):
        host.sensors(config)
    ok = make_config(host, {"FLEET_NODE_DATA_DIR": str(tmp_path),
                            "FLEET_NODE_CAPACITY_OVERRIDE": " Paused "})
    assert host.sensors(ok)[0].override == "paused"


async def test_fleet_cpu_is_not_learned_as_the_owners(tmp_path):
    sensor = sensor_for(tmp_path, sampler=FakeSampler(cpu=95, fleet=90, mem=20))
    report = (await sensor.read(None))["extras"]["capacity"]
    assert report["availability_score"] == pytest.approx(1 - load_of(5, 20), abs=0.01)
    assert sensor.learner.slots[9].cpu_mean == pytest.approx(5)


async def test_reads_and_file_io_happen_off_the_event_loop(tmp_path, monkeypatch):
    sampler = FakeSampler()
    mono = Clock(1000.0)
    sensor = sensor_for(tmp_path, sampler=sampler, monotonic=mono, save_interval=60)
    seen = []
    for name in ("read_state", "write_atomic"):
        original = getattr(herd_node_capacity, name)

        def spy(*args, _original=original, _name=name):
            seen.append((_name, threading.current_thread() is threading.main_thread()))
            return _original(*args)

        monkeypatch.setattr(herd_node_capacity, name, spy)
    await sensor.read(None)
    mono.t += 61
    await sensor.read(None)
    await sensor.pending_save
    assert sampler.threads == [False, False]
    assert seen == [("read_state", False), ("write_atomic", False)]


async def test_saves_at_most_every_interval_and_on_shutdown(tmp_path):
    mono, wall = Clock(1000.0), Clock(at(0, 0, 9))
    sensor = sensor_for(tmp_path, monotonic=mono, wall=wall, save_interval=300)
    await sensor.read(None)
    mono.t += 299
    wall.t += 299
    await sensor.read(None)
    assert sensor.pending_save is None and not sensor.path.exists()
    mono.t += 1
    wall.t += 1
    await sensor.read(None)
    first = sensor.pending_save
    await first
    assert json.loads(sensor.path.read_text())["node_id"] == "n"
    mono.t += 10
    await sensor.read(None)
    assert sensor.pending_save is first  # no second save within the interval
    # shutdown saves whatever was learned since, through the hook, with the agent as argument
    wall.t += 10
    await sensor.read(None)

    agent = SimpleNamespace(sensors=[object(), sensor])
    await herd_node_capacity.herd_shutdown(agent)
    assert json.loads(sensor.path.read_text())["last_observed"] == wall.t
    assert not list(tmp_path.glob("*.tmp"))  # temp files were renamed into place, none left


async def test_router_side_lifecycle_is_a_no_op(tmp_path):
    class RouterServices:  # the router's Services has no sensors
        config = None

    await herd_node_capacity.herd_startup(RouterServices())
    await herd_node_capacity.herd_shutdown(RouterServices())
    assert not list(tmp_path.iterdir())


async def test_learning_resumes_after_a_restart(tmp_path):
    wall = Clock(at(0, 0, 9))
    first = sensor_for(tmp_path, wall=wall)
    for _ in range(100):
        await first.read(None)
        wall.t += 5
    await first.flush()
    second = sensor_for(tmp_path, wall=wall)
    await second.start()
    assert second.learner.to_json("n", 0) == first.learner.to_json("n", 0)
    await second.read(None)
    assert second.learner.observed_hours > first.learner.observed_hours


@pytest.mark.parametrize("content", ["{not json", "[]", '{"format": "herd-node-capacity"}',
                                     "\udcff"])
async def test_a_corrupt_file_starts_fresh_with_a_warning(tmp_path, content):
    path = state_path(tmp_path, "n")
    path.write_text(content, errors="surrogateescape")
    sensor = sensor_for(tmp_path)
    with capture_logs() as logs:
        fragment = await sensor.read(None)
    assert fragment["extras"]["capacity"]["days_observed"] < 0.01
    assert any(e["log_level"] == "warning" and "corrupt" in e["event"] for e in logs)
    assert path.with_name(path.name + ".corrupt").exists()  # kept for a human to look at


async def test_a_missing_file_or_unwritable_dir_never_crashes(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    mono = Clock(0.0)
    sensor = CapacitySensor(path=state_path(blocker, "n"), node_id="n", sampler=FakeSampler(),
                            monotonic=mono, save_interval=1)
    with capture_logs() as logs:
        await sensor.read(None)
        mono.t += 2
        await sensor.read(None)
        await sensor.pending_save
        await sensor.flush()
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "capacity state unreadable; learning from scratch",
        "could not save learned capacity; will retry",
        "could not save learned capacity; will retry",
    ]


def test_state_path_is_safe_for_any_node_id(tmp_path):
    assert state_path(tmp_path, "studio").name == "capacity-studio.json"
    assert state_path(tmp_path, "../x y/z").parent == tmp_path
    assert state_path(tmp_path, "../x y/z").name == "capacity-.._x_y_z.json"


# --- real psutil, real agent ------------------------------------------------------------------------


def test_system_sampler_reads_this_machine():
    # this test process stands in for the fleet (its name is "pytest" or "python...", as run)
    sampler = SystemSampler((psutil.Process().name(),))
    for _ in range(2):
        sample = sampler.sample()
        assert 0 <= sample.cpu_pct <= 100 and 0 <= sample.fleet_cpu_pct <= 100
        assert 0 < sample.mem_pct <= 100 and sample.total_gb > 0
        assert 0 <= sample.owner_cpu_pct <= sample.cpu_pct
    assert os.getpid() in sampler._procs
    assert SystemSampler(()).sample().fleet_cpu_pct == 0


async def test_registered_sensor_reads_the_real_machine(tmp_path):
    host = make_host("node-capacity")
    assert {s.env for s in host.settings()} == {s.env for s in herd_node_capacity.SETTINGS}
    config = make_config(host, {"FLEET_NODE_DATA_DIR": str(tmp_path)}, FLEET_NODE_NODE_ID="box")
    [sensor] = host.sensors(config)
    assert (sensor.name, sensor.order) == ("capacity", 50)
    fragment = await sensor.read(NodeContext(config=config, node_id="box", http=None))
    hb = structure({"node_id": "box", **fragment}, Heartbeat)
    assert hb.extras["capacity"]["mode"] in ("full", "learned_high", "learned_medium",
                                             "learned_low", "paused")
    assert hb.extras["capacity"]["ceiling_gb"] > 0


async def test_agent_reports_capacity_and_saves_on_stop(herd_router, herd_agent, tmp_path):
    router = await herd_router(plugins="none")
    agent = await herd_agent(router.url, "http://127.0.0.1:9", "cap-node", plugins="node-capacity",
                             env={"FLEET_NODE_CAPACITY_OVERRIDE": "paused"})
    await wait_for(lambda: "cap-node" in router.services.fleet.nodes)
    hb = router.services.fleet.nodes["cap-node"].heartbeat
    assert hb.paused and hb.extras["capacity"]["mode"] == "paused"
    path = state_path(agent.config["FLEET_NODE_DATA_DIR"], "cap-node")
    agent.stop()
    await wait_for(path.exists)
    assert json.loads(path.read_text())["format"] == "herd-node-capacity"


async def test_a_load_cut_short_by_the_agents_timeout_is_retried_not_overwritten(
    tmp_path, monkeypatch
):
    wall = Clock(at(0, 0, 9))
    first = sensor_for(tmp_path, wall=wall)
    for _ in range(50):
        await first.read(None)
        wall.t += 5
    await first.flush()
    saved = first.path.read_text()

    gate = threading.Event()
    original = herd_node_capacity.read_state

    def held_read(path):
        gate.wait(10)  # held until the test has cancelled the read, as wait_for would
        return original(path)

    monkeypatch.setattr(herd_node_capacity, "read_state", held_read)
    second = sensor_for(tmp_path, wall=wall, monotonic=Clock(0.0), save_interval=1)
    task = asyncio.ensure_future(second.read(None))
    await asyncio.sleep(0)  # let the read reach the thread
    task.cancel()
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    await second.flush()  # nothing was loaded, so nothing is written
    assert first.path.read_text() == saved
    await second.read(None)  # the next read loads the file after all
    assert second.learner.observed_hours > first.learner.observed_hours
