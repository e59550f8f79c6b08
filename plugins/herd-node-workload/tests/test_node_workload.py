"""The workload window and classifier with injected counters and times (no psutil), the sensor
with an injected reader, one real psutil read, and one real agent against a real router."""

import threading

import herd_node_workload
import pytest
from herd_node_workload import (
    CLASSES,
    Counters,
    Summary,
    Thresholds,
    WorkloadSensor,
    WorkloadWindow,
    _is_loopback,
    classify,
    read_counters,
    sensor_from,
)

from herd_kernel.models import Heartbeat, structure
from herd_kernel.testing import make_config, make_host, wait_for

T = Thresholds()


def summary(cpu=0.0, mem=20.0, net=0.0, disk=0.0):
    return Summary(cpu_pct=cpu, mem_pct=mem, net_bps=net, disk_bps=disk)


# --- the classifier at each boundary ------------------------------------------------------------


@pytest.mark.parametrize(("cpu", "net", "expected"), [
    (0, 0, "idle"),
    (9.99, 0, "idle"),
    (10, 0, "light"),
    (34.99, 0, "light"),
    (35, 0, "moderate"),
    (59.99, 10e6, "moderate"),  # a busy network alone does not raise moderate
    (60, 0, "heavy"),
    (60, 499_999, "heavy"),
    (60, 500_000, "intensive"),  # heavy compute plus a call or stream
    (84.99, 0, "heavy"),
    (85, 0, "intensive"),
    (100, 0, "intensive"),
])
def test_cpu_and_network_boundaries(cpu, net, expected):
    assert classify(summary(cpu=cpu, net=net), T) == expected


@pytest.mark.parametrize(("cpu", "mem", "disk", "expected"), [
    (0, 69.99, 0, "idle"),
    (0, 70, 0, "light"),  # memory in use: at least light
    (40, 95, 0, "moderate"),  # ...never lowers a higher class
    (0, 20, 49_999_999, "idle"),
    (0, 20, 50_000_000, "moderate"),  # a busy disk: at least moderate
    (70, 20, 80_000_000, "heavy"),  # ...never lowers a higher class
])
def test_memory_and_disk_raise_the_class_but_never_lower_it(cpu, mem, disk, expected):
    assert classify(summary(cpu=cpu, mem=mem, disk=disk), T) == expected


def test_unknown_rates_classify_on_cpu_and_memory_alone():
    unknown = Summary(cpu_pct=70, mem_pct=20, net_bps=None, disk_bps=None)
    assert classify(unknown, T) == "heavy"


# --- the window ---------------------------------------------------------------------------------


def counters(busy, total, mem=30.0, net=0, disk=0):
    return Counters(cpu_busy=busy, cpu_total=total, mem_pct=mem, net_bytes=net, disk_bytes=disk)


def test_rates_and_cpu_come_from_counter_deltas():
    w = WorkloadWindow(window=120)
    # 2 CPUs: 10 s of CPU time per 5 s step; 4 of them busy = 40%
    w.add(0, counters(1000, 5000, mem=40, net=0, disk=0))
    w.add(5, counters(1004, 5010, mem=50, net=5_000_000, disk=1_000_000))
    w.add(10, counters(1008, 5020, mem=60, net=5_500_000, disk=2_000_000))
    s = w.summary()
    assert s.cpu_pct == pytest.approx(40)
    assert s.mem_pct == pytest.approx(55)  # the steps' readings, not the baseline
    assert s.net_bps == pytest.approx(550_000)
    assert s.disk_bps == pytest.approx(200_000)
    assert classify(s, T) == "moderate"


def test_first_read_falls_back_on_the_average_since_boot():
    w = WorkloadWindow()
    assert w.summary() == Summary(cpu_pct=0, mem_pct=0, net_bps=None, disk_bps=None)
    w.add(0, counters(250, 1000, mem=33))
    assert w.summary() == Summary(cpu_pct=25, mem_pct=33, net_bps=None, disk_bps=None)


def test_a_counter_that_goes_down_makes_that_step_unknown_not_negative():
    w = WorkloadWindow()
    w.add(0, counters(0, 10, net=10_000_000, disk=500))
    w.add(5, counters(5, 20, net=100, disk=1000))  # interface removed / counter reset
    s = w.summary()
    assert s.net_bps is None  # the only step is unknown
    assert s.disk_bps == pytest.approx(100)
    w.add(10, counters(10, 30, net=5100, disk=1500))  # resumes from the new value
    assert w.summary().net_bps == pytest.approx(1000)  # 5000 bytes over the one known 5 s step


def test_counters_the_os_does_not_give_are_none():
    w = WorkloadWindow()
    w.add(0, counters(0, 10, net=None, disk=None))
    w.add(5, counters(5, 20, net=None, disk=None))
    s = w.summary()
    assert (s.net_bps, s.disk_bps) == (None, None)
    assert s.cpu_pct == pytest.approx(50)
    w.add(10, counters(5, 30, net=1000, disk=None))  # a disk appearing later: still unknown once
    assert w.summary().net_bps is None
    w.add(15, counters(5, 40, net=2000, disk=None))
    assert w.summary().net_bps == pytest.approx(200)  # 1000 bytes over the one known 5 s step


def test_cpu_counters_going_backwards_do_not_give_negative_cpu():
    w = WorkloadWindow()
    w.add(0, counters(100, 1000))
    w.add(5, counters(90, 1010))  # busy went back (a quirk some kernels have)
    w.add(10, counters(95, 1020))
    assert w.summary().cpu_pct == pytest.approx(50)  # only the trustworthy step counts


def test_a_clock_that_does_not_advance_adds_no_step():
    w = WorkloadWindow()
    w.add(5, counters(0, 10))
    w.add(5, counters(5, 20))
    w.add(4, counters(6, 30))
    assert not w.steps


def test_the_window_is_bounded_by_age_and_by_length():
    w = WorkloadWindow(window=120, max_steps=30)
    for i in range(10_000):  # ~14 hours at 5 s
        w.add(i * 5.0, counters(i, i * 4, net=i * 1000, disk=i * 10))
    assert len(w.steps) == 24  # 120 s / 5 s
    assert w.steps[0].at > 9999 * 5.0 - 120
    # faster reads than the deque was sized for: the length bound holds, the window shrinks
    fast = WorkloadWindow(window=120, max_steps=30)
    for i in range(10_000):
        fast.add(i * 0.1, counters(i, i * 4))
    assert len(fast.steps) == 30


def test_old_activity_leaves_the_window():
    w = WorkloadWindow(window=120)
    t = 0.0
    w.add(t, counters(0, 0))
    for _ in range(24):  # two busy minutes
        t += 5
        w.add(t, counters(t * 2, t * 2))
    assert classify(w.summary(), T) == "intensive"
    busy_until = t * 2
    for _ in range(24):  # two idle minutes
        t += 5
        w.add(t, counters(busy_until, t * 2))
    assert classify(w.summary(), T) == "idle"


# --- the sensor ---------------------------------------------------------------------------------


class FakeReader:
    def __init__(self):
        self.i = 0
        self.threads = []

    def __call__(self):
        self.threads.append(threading.current_thread() is threading.main_thread())
        self.i += 1
        # 2 CPUs, 70% busy; 800 kB/s of network; a quiet disk
        return counters(self.i * 7, self.i * 10, mem=40, net=self.i * 4_000_000, disk=None)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 5.0
        return self.t


async def test_sensor_reads_off_the_loop_and_emits_a_valid_fragment():
    reader = FakeReader()
    sensor = WorkloadSensor(read=reader, monotonic=Clock())
    await sensor.read(None)
    fragment = await sensor.read(None)
    assert reader.threads == [False, False]
    hb = structure({"node_id": "n", **fragment}, Heartbeat)
    assert hb.extras["workload"] == {"class": "intensive", "cpu_pct": 70.0, "mem_pct": 40.0,
                                     "net_bps": 800_000, "disk_bps": None, "ceiling_factor": 0.25}


def test_settings_reach_the_sensor():
    host = make_host("node-workload")
    assert {s.env for s in host.settings()} == {s.env for s in herd_node_workload.SETTINGS}
    config = make_config(host, {"FLEET_NODE_WORKLOAD_BUSY_NET_KBPS": "100",
                                "FLEET_NODE_WORKLOAD_BUSY_DISK_MBPS": "2",
                                "FLEET_NODE_WORKLOAD_HEAVY_CPU": "50",
                                "FLEET_NODE_WORKLOAD_FACTOR_HEAVY": "0.6",
                                "FLEET_NODE_WORKLOAD_FACTOR_INTENSIVE": "-1",
                                "FLEET_NODE_WORKLOAD_FACTOR_IDLE": "3",
                                "FLEET_NODE_WORKLOAD_WINDOW_SECONDS": "30"},
                         FLEET_NODE_HEARTBEAT_INTERVAL=1.0)
    [sensor] = host.sensors(config)
    assert (sensor.name, sensor.order) == ("workload", 40)
    assert sensor.thresholds.busy_net_bps == 100_000
    assert sensor.thresholds.busy_disk_bps == 2_000_000
    assert sensor.thresholds.heavy_cpu == 50
    assert sensor.window.window == 30 and sensor.window.steps.maxlen == 34
    # factors are clamped to 0..1: the fleet never gets more than the ceiling, or less than none
    assert sensor.factors == {"idle": 1.0, "light": 0.9, "moderate": 0.7, "heavy": 0.6,
                              "intensive": 0.0}
    assert list(sensor.factors) == list(CLASSES)


@pytest.mark.parametrize(("nic", "loopback"), [
    ("lo", True), ("lo0", True), ("Loopback Pseudo-Interface 1", True), ("eth0", False),
    ("en0", False), ("wlan0", False), ("Local Area Connection", False), ("lowpan0", False),
])
def test_loopback_interfaces_are_not_the_owners_traffic(nic, loopback):
    assert _is_loopback(nic) is loopback


# --- real psutil, real agent ------------------------------------------------------------------------


def test_real_counters():
    first, second = read_counters(), read_counters()
    assert second.cpu_total >= first.cpu_total > 0 and 0 <= first.cpu_busy <= first.cpu_total
    assert 0 < first.mem_pct <= 100
    assert first.net_bytes is None or first.net_bytes >= 0
    assert first.disk_bytes is None or first.disk_bytes >= 0


async def test_registered_sensor_reads_the_real_machine():
    host = make_host("node-workload")
    [sensor] = host.sensors(make_config(host))
    fragment = await sensor.read(None)
    workload = structure({"node_id": "n", **fragment}, Heartbeat).extras["workload"]
    assert workload["class"] in CLASSES
    assert workload["ceiling_factor"] == sensor_from(make_config(host)).factors[workload["class"]]


async def test_agent_reports_workload(herd_router, herd_agent):
    router = await herd_router(plugins="none")
    await herd_agent(router.url, "http://127.0.0.1:9", "wl-node", plugins="node-workload")
    await wait_for(lambda: "wl-node" in router.services.fleet.nodes)
    workload = router.services.fleet.nodes["wl-node"].heartbeat.extras["workload"]
    assert workload["class"] in CLASSES and 0 <= workload["ceiling_factor"] <= 1
