"""Capacity sensor for the node agent: learns, per hour of the week, when the owner leaves this
machine free, and reports an availability score, a trend, a mode and a memory ceiling in
``extras["capacity"]`` of every heartbeat. The learning itself lives in ``learner.py``.

psutil and file I/O run in worker threads; the learner's arithmetic (one slot per reading) runs on
the loop because it takes microseconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
from attrs import frozen

from herd_kernel.api import NodeContext
from herd_kernel.config import Config, Setting, SettingError
from herd_kernel.hookspecs import hookimpl
from herd_kernel.lazy import lazy
from herd_node_capacity.learner import OVERRIDES, CapacityLearner

psutil = lazy("psutil")  # only node agents read it; the router loads this plugin too

__all__ = ["CapacityLearner", "CapacitySensor", "Sample", "SystemSampler", "state_path"]

log = structlog.get_logger("herd.node.capacity")

GB = 1024**3

SETTINGS = (
    Setting(env="FLEET_NODE_CAPACITY_HALF_LIFE_DAYS", type=float, default=14.0, scope="node",
            help="Half-life, in days, of what the capacity learner knows about each hour of the "
                 "week: older weeks count half as much every this many days."),
    Setting(env="FLEET_NODE_CAPACITY_OVERRIDE", type=str, default="", scope="node",
            help="Owner's override of the learned capacity: empty (learn), 'full' (the fleet may "
                 "use this machine fully) or 'paused' (the router sends it nothing)."),
    Setting(env="FLEET_NODE_CAPACITY_SAVE_INTERVAL", type=float, default=300.0, scope="node",
            help="Seconds between saves of the learned capacity to <node data dir>/"
                 "capacity-<node id>.json (it is also saved when the agent stops)."),
    Setting(env="FLEET_NODE_CAPACITY_FLEET_PROCESSES", type=str, default="ollama", scope="node",
            help="Comma-separated process name prefixes whose CPU is the fleet's own work, not the "
                 "owner's, and is left out of what the capacity learner learns; empty counts all."),
)


def state_path(data_dir: Path, node_id: str) -> Path:
    """``<data dir>/capacity-<node id>.json``; characters a file name cannot safely hold (a node
    id may contain '/' or spaces) become '_'."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", node_id) or "node"
    return Path(data_dir) / f"capacity-{safe}.json"


# --- reading the machine (runs in a worker thread) --------------------------------------------


@frozen(kw_only=True)
class Sample:
    cpu_pct: float  # whole machine
    fleet_cpu_pct: float  # the part used by the fleet's own processes (Ollama)
    mem_pct: float
    total_gb: float

    @property
    def owner_cpu_pct(self) -> float:
        return max(0.0, self.cpu_pct - self.fleet_cpu_pct)


def _busy_and_total(times: Any) -> tuple[float, float]:
    # psutil's own accounting: guest time is already inside user/nice on Linux, and iowait is idle
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


class SystemSampler:
    """CPU%, the fleet's share of it, and memory%, from psutil. Thread-safe; call from a thread.

    CPU% comes from our own ``cpu_times()`` deltas, not ``psutil.cpu_percent(interval=None)``:
    psutil keeps that baseline per calling thread (older versions: one per process), and
    ``asyncio.to_thread`` runs each read on whichever pool thread is free, so the interval it
    measures would be arbitrary (0% on a fresh thread) as soon as other sensors read concurrently.
    """

    RESCAN_SECONDS = 60.0  # new Ollama runners appear when models load; a minute's lag is fine

    def __init__(self, fleet_prefixes: Sequence[str] = ("ollama",)) -> None:
        self.fleet_prefixes = tuple(p.lower() for p in fleet_prefixes if p)
        self._lock = threading.Lock()
        # None until the first read: the first delta is then "since boot", a fair first guess
        self._prev: tuple[float, float] | None = None
        self._procs: dict[int, psutil.Process] = {}
        self._scanned_at: float | None = None
        self._cpus = 0  # learned on the first sample, in the worker thread

    def sample(self) -> Sample:
        with self._lock:  # a read that timed out may still be running in its thread
            busy, total = _busy_and_total(psutil.cpu_times())
            prev_busy, prev_total = self._prev or (0.0, 0.0)
            self._prev = (busy, total)
            d_total = total - prev_total
            d_busy = busy - prev_busy
            cpu = 100.0 * min(1.0, max(0.0, d_busy / d_total)) if d_total > 0 else 0.0
            mem = psutil.virtual_memory()
            return Sample(cpu_pct=cpu, fleet_cpu_pct=self._fleet_cpu(),
                          mem_pct=float(mem.percent), total_gb=mem.total / GB)

    def _fleet_cpu(self) -> float:
        if not self.fleet_prefixes:
            return 0.0
        if not self._cpus:
            self._cpus = psutil.cpu_count(logical=True) or 1
        now = time.monotonic()
        if self._scanned_at is None or now - self._scanned_at >= self.RESCAN_SECONDS:
            self._rescan()
            self._scanned_at = now
        used = 0.0
        for pid, proc in list(self._procs.items()):
            try:
                # our own Process objects, so this baseline is ours alone; the first call is 0
                used += proc.cpu_percent(interval=None)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                del self._procs[pid]
        return min(100.0, used / self._cpus)  # Process.cpu_percent is per CPU (can exceed 100)

    def _rescan(self) -> None:
        found: dict[int, psutil.Process] = {}
        for info in psutil.process_iter(["name"]):
            name = (info.info.get("name") or "").lower()
            if not name.startswith(self.fleet_prefixes):
                continue
            known = self._procs.get(info.pid)
            try:
                # keep a known Process (its CPU baseline) unless the pid was reused
                if known is not None and known.is_running():
                    found[info.pid] = known
                else:
                    found[info.pid] = psutil.Process(info.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        self._procs = found


# --- the state file (runs in a worker thread) --------------------------------------------------


def write_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON so a crash leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, separators=(",", ":"))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_state(path: Path) -> Any:
    """The parsed JSON, or None when there is no file yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return json.loads(text)


def _move_aside(path: Path) -> str | None:
    """Keep a corrupt state file for a human to look at instead of overwriting it at next save."""
    aside = path.with_name(path.name + ".corrupt")
    try:
        os.replace(path, aside)
    except OSError:
        return None
    return str(aside)


# --- the sensor ----------------------------------------------------------------------------------


class CapacitySensor:
    """Reads the machine, teaches the learner, reports its assessment, saves now and then."""

    name = "capacity"
    order = 50

    def __init__(
        self,
        *,
        path: Path,
        node_id: str,
        override: str = "",
        half_life_days: float = 14.0,
        save_interval: float = 300.0,
        sampler: Any = None,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        localtime: Callable[[float], time.struct_time] = time.localtime,
    ) -> None:
        if override not in OVERRIDES:
            raise SettingError(
                f"FLEET_NODE_CAPACITY_OVERRIDE={override!r} is not one of '', 'full', 'paused'"
            )
        self.path = path
        self.node_id = node_id
        self.override = override
        self.half_life_days = half_life_days
        self.save_interval = save_interval
        self.sampler = sampler if sampler is not None else SystemSampler()
        self.wall = wall
        self.monotonic = monotonic
        self.localtime = localtime
        self.learner = CapacityLearner(half_life_days=half_life_days, localtime=localtime)
        self._loaded = False
        self._load_lock = asyncio.Lock()
        self._last_save = 0.0
        self._saving: asyncio.Task[None] | None = None

    @property
    def pending_save(self) -> asyncio.Task[None] | None:
        """The save running in the background, if any (tests await it)."""
        return self._saving

    async def start(self) -> None:
        # no CPU baseline here: the first read follows within milliseconds, and a delta that short
        # is 0% or 100%; the first read's "since boot" average is the better first guess
        await self.ensure_loaded()

    async def ensure_loaded(self) -> None:
        async with self._load_lock:
            if self._loaded:
                return
            # _loaded is set only once the file has been dealt with: if the agent's timeout
            # cancels this first read, the next read loads again, and no save can overwrite the
            # file with an empty learner
            try:
                data = await asyncio.to_thread(read_state, self.path)
                if data is None:
                    log.info("no saved capacity yet; learning from scratch", path=str(self.path))
                else:
                    self.learner = CapacityLearner.from_json(
                        data, half_life_days=self.half_life_days, localtime=self.localtime
                    )
                    log.info("loaded learned capacity", path=str(self.path),
                             days_observed=round(self.learner.days_observed, 2))
            except OSError as exc:
                # never crash the agent over a state file: start over, and say so
                log.warning("capacity state unreadable; learning from scratch",
                            path=str(self.path), error=repr(exc))
            except ValueError as exc:  # bad JSON (JSONDecodeError) or CorruptState
                aside = await asyncio.to_thread(_move_aside, self.path)
                log.warning("capacity state corrupt; learning from scratch",
                            path=str(self.path), kept_as=aside, error=repr(exc))
            self._loaded = True
            self._last_save = self.monotonic()

    async def read(self, ctx: NodeContext | None) -> Mapping[str, Any]:
        await self.ensure_loaded()
        sample = await asyncio.to_thread(self.sampler.sample)
        now = self.wall()
        self.learner.observe(now, sample.owner_cpu_pct, sample.mem_pct)
        report = self.learner.assess(now, total_gb=sample.total_gb, override=self.override)
        self._maybe_save(now)
        fragment: dict[str, Any] = {"extras": {"capacity": report}}
        if self.override == "paused":
            fragment["paused"] = True  # the kernel eliminates paused nodes; the owner asked for it
        return fragment

    def _maybe_save(self, now: float) -> None:
        if self.monotonic() - self._last_save < self.save_interval:
            return
        if self._saving is not None and not self._saving.done():
            return  # a slow disk: let the running save finish rather than queue another
        self._last_save = self.monotonic()
        # snapshot on the loop (168 small lists), so the thread never sees a half-updated slot
        snapshot = self.learner.to_json(self.node_id, now)
        self._saving = asyncio.create_task(self._write(snapshot))

    async def _write(self, snapshot: Mapping[str, Any]) -> None:
        try:
            await asyncio.to_thread(write_atomic, self.path, snapshot)
        except OSError as exc:
            log.warning("could not save learned capacity; will retry", path=str(self.path),
                        error=repr(exc))

    async def flush(self) -> None:
        """Save now (at shutdown), after any save already running."""
        if not self._loaded:
            return  # nothing learned this run: do not overwrite a file we never read
        if self._saving is not None:
            await asyncio.gather(self._saving, return_exceptions=True)
        self._last_save = self.monotonic()
        await self._write(self.learner.to_json(self.node_id, self.wall()))


def _fleet_prefixes(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _our_sensors(services: Any) -> list[CapacitySensor]:
    # the agent passes the NodeAgent (it has .sensors); the router passes its Services (it has
    # none), and there this plugin has nothing to start or stop
    return [s for s in getattr(services, "sensors", ()) or () if isinstance(s, CapacitySensor)]


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_node_sensors(config: Config) -> list[CapacitySensor]:
    override = config["FLEET_NODE_CAPACITY_OVERRIDE"].strip().lower()
    return [
        CapacitySensor(
            path=state_path(config["FLEET_NODE_DATA_DIR"], config["FLEET_NODE_NODE_ID"]),
            node_id=config["FLEET_NODE_NODE_ID"],
            override=override,
            half_life_days=config["FLEET_NODE_CAPACITY_HALF_LIFE_DAYS"],
            save_interval=config["FLEET_NODE_CAPACITY_SAVE_INTERVAL"],
            sampler=SystemSampler(_fleet_prefixes(config["FLEET_NODE_CAPACITY_FLEET_PROCESSES"])),
        )
    ]


@hookimpl
async def herd_startup(services: Any) -> None:
    for sensor in _our_sensors(services):
        await sensor.start()


@hookimpl
async def herd_shutdown(services: Any) -> None:
    for sensor in _our_sensors(services):
        await sensor.flush()
