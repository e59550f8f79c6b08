"""System sensor for the node agent: CPU, memory (with a pressure level) and disk from psutil.

psutil calls can block (they read /proc or call the OS), so every reading runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import os
import platform as platform_module
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from herd_kernel.api import NodeContext
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl
from herd_kernel.lazy import lazy
from herd_node_system import probes

psutil = lazy("psutil")  # only node agents read it; the router loads this plugin too

GB = 1024**3

SETTINGS = (
    Setting(env="FLEET_NODE_MEMORY_WARN_PCT", type=float, default=85.0, scope="node",
            help="Memory use (percent) at which the node reports pressure 'warn'."),
    Setting(env="FLEET_NODE_MEMORY_CRITICAL_PCT", type=float, default=95.0, scope="node",
            help="Memory use (percent) at which the node reports pressure 'critical'."),
    Setting(env="FLEET_NODE_PROBE_TIMEOUT", type=float, default=2.0, scope="node",
            help="Seconds an external probe (nvidia-smi, sysctl, pmset) may take before it is "
            "killed and its reading skipped."),
)

# Linux PSI: share of the last 10 s some task stalled on memory; above these the machine is
# thrashing even when "available" memory looks fine
PSI_WARN, PSI_CRITICAL = 10.0, 40.0
_LEVELS = ("normal", "warn", "critical")


def worst(*levels: str | None) -> str:
    return max((lvl for lvl in levels if lvl in _LEVELS), key=_LEVELS.index, default="normal")


def thermal_from_temperatures(temps: dict[str, Any]) -> dict[str, Any]:
    """The hottest sensor against its own high/critical marks (psutil.sensors_temperatures)."""
    hottest = None
    for entries in temps.values():
        for entry in entries:
            current = getattr(entry, "current", None)
            if current is None:
                continue
            if hottest is None or current > hottest.current:
                hottest = entry
    if hottest is None:
        return {"state": "unknown", "temperature_c": None, "source": ""}
    high = getattr(hottest, "high", None) or 85.0
    critical = getattr(hottest, "critical", None) or high + 15
    state = ("critical" if hottest.current >= critical else "serious" if hottest.current >= high
             else "fair" if hottest.current >= high - 10 else "nominal")
    return {"state": state, "temperature_c": round(hottest.current, 1), "source": "psutil"}


def pressure_level(used_pct: float, warn: float, critical: float) -> str:
    if used_pct >= critical:
        return "critical"
    if used_pct >= warn:
        return "warn"
    return "normal"


class SystemSensor:
    name = "system"
    order = 10

    def __init__(
        self,
        disk_path: Path,
        warn_pct: float,
        critical_pct: float,
        *,
        probe_timeout: float = 2.0,
        runner: probes.Runner = probes.run,
        platform: str = sys.platform,
        machine: str = "",
    ) -> None:
        self.disk_path = disk_path
        self.warn_pct = warn_pct
        self.critical_pct = critical_pct
        self.probe_timeout = probe_timeout
        self.runner = runner
        self.platform = platform
        self.machine = machine or platform_module.machine()
        self._last_times: Any = None
        self._lock = threading.Lock()

    def read_sync(self) -> dict[str, Any]:
        cpu_pct = self._cpu_percent()
        mem = psutil.virtual_memory()
        path = self.disk_path if self.disk_path.exists() else Path(os.sep)
        disk = psutil.disk_usage(str(path))
        try:
            load_1m = os.getloadavg()[0]
        except (AttributeError, OSError):
            load_1m = None
        used = mem.total - mem.available
        swap = psutil.swap_memory()
        temps_reader = getattr(psutil, "sensors_temperatures", None)
        try:
            temps = temps_reader() if temps_reader is not None else {}
        except (OSError, RuntimeError):
            temps = {}
        psi = probes.linux_psi() if self.platform.startswith("linux") else None
        psi_level = None
        if psi is not None:
            psi_level = "critical" if psi >= PSI_CRITICAL else "warn" if psi >= PSI_WARN else "normal"
        return {
            "cpu": {
                "cores_physical": psutil.cpu_count(logical=False) or 0,
                "cores_logical": psutil.cpu_count(logical=True) or 0,
                "utilization_pct": round(cpu_pct, 1),
                "load_avg_1m": None if load_1m is None else round(load_1m, 2),
            },
            "memory": {
                "total_gb": round(mem.total / GB, 3),
                "used_gb": round(used / GB, 3),
                "available_gb": round(mem.available / GB, 3),
                "pressure": worst(
                    pressure_level(mem.percent, self.warn_pct, self.critical_pct), psi_level
                ),
                "swap_total_gb": round(swap.total / GB, 3),
                "swap_used_gb": round(swap.used / GB, 3),
                "unified": self.platform == "darwin" and self.machine == "arm64",
            },
            "thermal": thermal_from_temperatures(temps or {}),
            "disk": {
                "total_gb": round(disk.total / GB, 3),
                "used_gb": round(disk.used / GB, 3),
                "available_gb": round(disk.free / GB, 3),
            },
        }

    def _cpu_percent(self) -> float:
        """Busy share of all CPUs since the previous reading, from our own cpu_times() deltas.

        psutil's cpu_percent(interval=None) keeps its baseline per calling thread, and to_thread
        hands each read a different pool thread, so it would measure the wrong interval."""
        with self._lock:
            now = psutil.cpu_times()
            last, self._last_times = self._last_times, now
        if last is None:
            return 0.0  # no interval yet: the first heartbeat says idle rather than guessing
        total = sum(now) - sum(last)
        idle = (now.idle - last.idle) + (getattr(now, "iowait", 0) - getattr(last, "iowait", 0))
        return max(0.0, min(100.0, 100.0 * (total - idle) / total)) if total > 0 else 0.0

    async def read(self, ctx: NodeContext) -> Mapping[str, Any]:
        reading, gpus, mac_pressure, mac_thermal = await asyncio.gather(
            asyncio.to_thread(self.read_sync),
            probes.nvidia_gpus(self.runner, self.probe_timeout),
            self._mac(probes.macos_pressure),
            self._mac(probes.macos_thermal),
        )
        if gpus:
            reading["gpus"] = gpus
        if mac_pressure:
            # the kernel's own judgement beats a used-percent guess (macOS compresses memory)
            reading["memory"]["pressure"] = mac_pressure
        if mac_thermal:
            reading["thermal"] = {"state": mac_thermal, "temperature_c": None, "source": "pmset"}
        return reading

    async def _mac(self, probe: Any) -> str | None:
        if self.platform != "darwin":
            return None
        return await probe(self.runner, self.probe_timeout)


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_node_sensors(config: Config) -> list[SystemSensor]:
    return [
        SystemSensor(
            disk_path=Path(config["FLEET_NODE_DATA_DIR"]),
            warn_pct=config["FLEET_NODE_MEMORY_WARN_PCT"],
            critical_pct=config["FLEET_NODE_MEMORY_CRITICAL_PCT"],
            probe_timeout=config["FLEET_NODE_PROBE_TIMEOUT"],
        )
    ]
