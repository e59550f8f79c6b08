"""System sensor for the node agent: CPU, memory (with a pressure level) and disk from psutil.

psutil calls can block (they read /proc or call the OS), so every reading runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from herd_kernel.api import NodeContext
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl

GB = 1024**3

SETTINGS = (
    Setting(env="FLEET_NODE_MEMORY_WARN_PCT", type=float, default=85.0, scope="node",
            help="Memory use (percent) at which the node reports pressure 'warn'."),
    Setting(env="FLEET_NODE_MEMORY_CRITICAL_PCT", type=float, default=95.0, scope="node",
            help="Memory use (percent) at which the node reports pressure 'critical'."),
)


def pressure_level(used_pct: float, warn: float, critical: float) -> str:
    if used_pct >= critical:
        return "critical"
    if used_pct >= warn:
        return "warn"
    return "normal"


class SystemSensor:
    name = "system"
    order = 10

    def __init__(self, disk_path: Path, warn_pct: float, critical_pct: float) -> None:
        self.disk_path = disk_path
        self.warn_pct = warn_pct
        self.critical_pct = critical_pct
        self._primed = False

    def read_sync(self) -> dict[str, Any]:
        if not self._primed:
            # the first non-blocking cpu_percent() call only sets the baseline
            psutil.cpu_percent(interval=None)
            self._primed = True
        cpu_pct = psutil.cpu_percent(interval=None)
        mem = psutil.virtual_memory()
        path = self.disk_path if self.disk_path.exists() else Path(os.sep)
        disk = psutil.disk_usage(str(path))
        try:
            load_1m = os.getloadavg()[0]
        except (AttributeError, OSError):
            load_1m = None
        used = mem.total - mem.available
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
                "pressure": pressure_level(mem.percent, self.warn_pct, self.critical_pct),
            },
            "disk": {
                "total_gb": round(disk.total / GB, 3),
                "used_gb": round(disk.used / GB, 3),
                "available_gb": round(disk.free / GB, 3),
            },
        }

    async def read(self, ctx: NodeContext) -> Mapping[str, Any]:
        return await asyncio.to_thread(self.read_sync)


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
        )
    ]
