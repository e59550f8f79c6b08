"""Workload sensor for the node agent: what is this machine doing right now, idle to intensive,
judged from a short window of CPU, memory, network and disk rates (never from app names), and how
much of its memory the fleet should therefore leave alone (``extras["workload"]``).

psutil runs in a worker thread; the window and the classifier are pure and take injected times.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from attrs import frozen

from herd_kernel.api import NodeContext
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl
from herd_kernel.lazy import lazy

psutil = lazy("psutil")  # only node agents read it; the router loads this plugin too

CLASSES = ("idle", "light", "moderate", "heavy", "intensive")

SETTINGS = (
    Setting(env="FLEET_NODE_WORKLOAD_WINDOW_SECONDS", type=float, default=120.0, scope="node",
            help="Seconds of recent activity the workload class is judged on."),
    Setting(env="FLEET_NODE_WORKLOAD_LIGHT_CPU", type=float, default=10.0, scope="node",
            help="Average CPU percent over the window at or above which the workload is 'light'."),
    Setting(env="FLEET_NODE_WORKLOAD_MODERATE_CPU", type=float, default=35.0, scope="node",
            help="Average CPU percent at or above which the workload is 'moderate'."),
    Setting(env="FLEET_NODE_WORKLOAD_HEAVY_CPU", type=float, default=60.0, scope="node",
            help="Average CPU percent at or above which the workload is 'heavy' ('intensive' "
                 "when the network is busy too)."),
    Setting(env="FLEET_NODE_WORKLOAD_INTENSIVE_CPU", type=float, default=85.0, scope="node",
            help="Average CPU percent at or above which the workload is 'intensive'."),
    Setting(env="FLEET_NODE_WORKLOAD_BUSY_NET_KBPS", type=float, default=500.0, scope="node",
            help="Network kilobytes (1000 bytes) per second, in plus out, that make a 'heavy' "
                 "CPU load 'intensive' (a video call or a stream on top of the work)."),
    Setting(env="FLEET_NODE_WORKLOAD_BUSY_DISK_MBPS", type=float, default=50.0, scope="node",
            help="Disk megabytes (10^6 bytes) per second, read plus written, that make the "
                 "workload at least 'moderate' (copies, builds, backups)."),
    Setting(env="FLEET_NODE_WORKLOAD_LIGHT_MEM", type=float, default=70.0, scope="node",
            help="Average memory percent in use that makes the workload at least 'light'."),
    *(
        Setting(env=f"FLEET_NODE_WORKLOAD_FACTOR_{cls.upper()}", type=float, default=default,
                scope="node",
                help=f"ceiling_factor reported for a '{cls}' workload: the share of the node's "
                     "memory ceiling the fleet may still use (0..1).")
        for cls, default in zip(CLASSES, (1.0, 0.9, 0.7, 0.5, 0.25), strict=True)
    ),
)


# --- counters (read in a worker thread) -------------------------------------------------------


@frozen(kw_only=True)
class Counters:
    """Cumulative counters at one moment. ``None`` where the OS gave nothing (no disks, no
    network interfaces, or a platform psutil cannot read)."""

    cpu_busy: float  # CPU seconds, all cores
    cpu_total: float
    mem_pct: float
    net_bytes: int | None  # sent + received on non-loopback interfaces
    disk_bytes: int | None  # read + written, all disks


def _is_loopback(nic: str) -> bool:
    name = nic.lower()
    # Linux "lo", macOS/BSD "lo0", Windows "Loopback Pseudo-Interface 1"; not "local area ..."
    return name == "lo" or (name.startswith("lo") and name[2:].isdigit()) or "loopback" in name


def read_counters() -> Counters:
    # cumulative cpu_times, differenced by the window, rather than cpu_percent(interval=None):
    # psutil keeps that baseline per calling thread, and to_thread picks any free pool thread
    times = psutil.cpu_times()
    # psutil's own accounting: guest is already in user/nice on Linux, iowait is idle time
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    busy = total - times.idle - getattr(times, "iowait", 0.0)
    try:
        nics = psutil.net_io_counters(pernic=True) or {}
        # loopback is the router talking to this node's Ollama, not the owner's traffic
        net: int | None = sum(c.bytes_sent + c.bytes_recv
                              for nic, c in nics.items() if not _is_loopback(nic))
    except (OSError, RuntimeError):
        net = None
    try:
        disk_io = psutil.disk_io_counters()
        disk = None if disk_io is None else disk_io.read_bytes + disk_io.write_bytes
    except (OSError, RuntimeError):
        disk = None
    return Counters(cpu_busy=busy, cpu_total=total, mem_pct=float(psutil.virtual_memory().percent),
                    net_bytes=net, disk_bytes=disk)


# --- the window (pure) ---------------------------------------------------------------------------


@frozen(kw_only=True)
class Step:
    """What happened between two reads. Deltas are None when they cannot be trusted."""

    at: float
    seconds: float
    cpu_busy: float | None
    cpu_total: float | None
    mem_pct: float
    net_bytes: int | None
    disk_bytes: int | None


@frozen(kw_only=True)
class Summary:
    cpu_pct: float
    mem_pct: float
    net_bps: float | None  # bytes per second, None when no step had a usable counter
    disk_bps: float | None


def _delta(new: float | None, old: float | None) -> float | None:
    if new is None or old is None:
        return None
    # a counter that went down was reset (interface removed, driver reloaded, 32-bit wrap psutil
    # could not mend): this step is unknown, the next one starts from the new value
    return new - old if new >= old else None


class WorkloadWindow:
    """The last ``window`` seconds of steps, in a deque that can never outgrow ``max_steps``."""

    def __init__(self, window: float = 120.0, max_steps: int = 256) -> None:
        self.window = window
        self.steps: deque[Step] = deque(maxlen=max(2, max_steps))
        self._last: tuple[float, Counters] | None = None

    def add(self, now: float, counters: Counters) -> None:
        if self._last is None:
            self._last = (now, counters)
            # no step yet; summary() falls back on the CPU average since boot
            return
        then, old = self._last
        self._last = (now, counters)
        seconds = now - then
        if seconds <= 0 or not math.isfinite(seconds):
            return  # same instant twice, or the clock jumped back: nothing to measure
        self.steps.append(Step(
            at=now,
            seconds=seconds,
            cpu_busy=_delta(counters.cpu_busy, old.cpu_busy),
            cpu_total=_delta(counters.cpu_total, old.cpu_total),
            mem_pct=counters.mem_pct,
            net_bytes=_delta(counters.net_bytes, old.net_bytes),  # type: ignore[arg-type]
            disk_bytes=_delta(counters.disk_bytes, old.disk_bytes),  # type: ignore[arg-type]
        ))
        while self.steps and self.steps[0].at <= now - self.window:
            self.steps.popleft()

    def summary(self) -> Summary:
        steps = list(self.steps)
        # CPU over the window is total busy time over total time, not a mean of per-step ratios
        busy = sum(s.cpu_busy for s in steps if s.cpu_busy is not None and s.cpu_total)
        total = sum(s.cpu_total for s in steps if s.cpu_busy is not None and s.cpu_total)
        if total <= 0 and self._last is not None:
            # nothing to difference yet: the average since boot is the best first guess
            busy, total = self._last[1].cpu_busy, self._last[1].cpu_total
        cpu = 100.0 * min(1.0, max(0.0, busy / total)) if total > 0 else 0.0
        if steps:
            mem = sum(s.mem_pct for s in steps) / len(steps)
        else:
            mem = self._last[1].mem_pct if self._last is not None else 0.0
        return Summary(cpu_pct=cpu, mem_pct=mem, net_bps=_rate(steps, "net_bytes"),
                       disk_bps=_rate(steps, "disk_bytes"))


def _rate(steps: Sequence[Step], attr: str) -> float | None:
    known = [(getattr(s, attr), s.seconds) for s in steps if getattr(s, attr) is not None]
    seconds = sum(sec for _, sec in known)
    return sum(b for b, _ in known) / seconds if known and seconds > 0 else None


# --- the classifier (pure) --------------------------------------------------------------------


@frozen(kw_only=True)
class Thresholds:
    light_cpu: float = 10.0
    moderate_cpu: float = 35.0
    heavy_cpu: float = 60.0
    intensive_cpu: float = 85.0
    busy_net_bps: float = 500_000.0
    busy_disk_bps: float = 50_000_000.0
    light_mem: float = 70.0


def classify(summary: Summary, t: Thresholds) -> str:
    """CPU sets the class; a busy network turns heavy into intensive; a busy disk makes it at
    least moderate; memory in use makes it at least light. Thresholds are "at or above"."""
    cpu = summary.cpu_pct
    net = summary.net_bps or 0.0
    disk = summary.disk_bps or 0.0
    if cpu >= t.intensive_cpu:
        cls = "intensive"
    elif cpu >= t.heavy_cpu:
        cls = "intensive" if net >= t.busy_net_bps else "heavy"
    elif cpu >= t.moderate_cpu:
        cls = "moderate"
    elif cpu >= t.light_cpu:
        cls = "light"
    else:
        cls = "idle"
    rank = CLASSES.index(cls)
    if disk >= t.busy_disk_bps:
        rank = max(rank, CLASSES.index("moderate"))
    if summary.mem_pct >= t.light_mem:
        rank = max(rank, CLASSES.index("light"))
    return CLASSES[rank]


# --- the sensor --------------------------------------------------------------------------------


class WorkloadSensor:
    name = "workload"
    order = 40

    def __init__(
        self,
        *,
        window: float = 120.0,
        interval: float = 5.0,
        thresholds: Thresholds | None = None,
        factors: Mapping[str, float] | None = None,
        read: Callable[[], Counters] = read_counters,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        # room for a full window at the heartbeat rate, plus slack; the age cut does the rest
        max_steps = min(10_000, math.ceil(window / max(interval, 0.05)) + 4)
        self.window = WorkloadWindow(window, max_steps)
        self.thresholds = thresholds or Thresholds()
        defaults = dict(zip(CLASSES, (1.0, 0.9, 0.7, 0.5, 0.25), strict=True))
        # a factor outside 0..1 would let the fleet use more than the ceiling, or less than none
        self.factors = {c: min(1.0, max(0.0, (factors or defaults).get(c, defaults[c])))
                        for c in CLASSES}
        self._read = read
        self.monotonic = monotonic
        self._lock = threading.Lock()

    def _read_locked(self) -> Counters:
        with self._lock:  # a read that timed out may still be running in its thread
            return self._read()

    async def read(self, ctx: NodeContext | None) -> Mapping[str, Any]:
        counters = await asyncio.to_thread(self._read_locked)
        self.window.add(self.monotonic(), counters)
        summary = self.window.summary()
        cls = classify(summary, self.thresholds)
        return {"extras": {"workload": {
            "class": cls,
            "cpu_pct": round(summary.cpu_pct, 1),
            "mem_pct": round(summary.mem_pct, 1),
            "net_bps": None if summary.net_bps is None else round(summary.net_bps),
            "disk_bps": None if summary.disk_bps is None else round(summary.disk_bps),
            "ceiling_factor": self.factors[cls],
        }}}


def sensor_from(config: Config, **kw: Any) -> WorkloadSensor:
    return WorkloadSensor(
        window=config["FLEET_NODE_WORKLOAD_WINDOW_SECONDS"],
        interval=config["FLEET_NODE_HEARTBEAT_INTERVAL"],
        thresholds=Thresholds(
            light_cpu=config["FLEET_NODE_WORKLOAD_LIGHT_CPU"],
            moderate_cpu=config["FLEET_NODE_WORKLOAD_MODERATE_CPU"],
            heavy_cpu=config["FLEET_NODE_WORKLOAD_HEAVY_CPU"],
            intensive_cpu=config["FLEET_NODE_WORKLOAD_INTENSIVE_CPU"],
            busy_net_bps=config["FLEET_NODE_WORKLOAD_BUSY_NET_KBPS"] * 1000.0,
            busy_disk_bps=config["FLEET_NODE_WORKLOAD_BUSY_DISK_MBPS"] * 1_000_000.0,
            light_mem=config["FLEET_NODE_WORKLOAD_LIGHT_MEM"],
        ),
        factors={c: config[f"FLEET_NODE_WORKLOAD_FACTOR_{c.upper()}"] for c in CLASSES},
        **kw,
    )


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_node_sensors(config: Config) -> list[WorkloadSensor]:
    return [sensor_from(config)]

