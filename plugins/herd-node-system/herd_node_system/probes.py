"""Readings that need an external command or an OS-specific file: NVIDIA GPUs (``nvidia-smi``),
macOS memory pressure (``sysctl kern.memorystatus_vm_pressure_level``) and thermal throttling
(``pmset -g therm``), Linux pressure stall information (``/proc/pressure/memory``).

Commands go through the kernel's shared runner (asyncio subprocess, own process group, killed on
timeout or cancellation); a command that is missing, fails or times out yields "no reading",
never an exception. ``run`` is the seam the
tests replace with recorded output.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from herd_node.commands import run_command

Runner = Callable[[Sequence[str], float], Awaitable[tuple[int, str] | None]]


async def run(argv: Sequence[str], timeout: float) -> tuple[int, str] | None:
    """(return code, stdout) of a command, or None when it is missing or too slow."""
    code, out = await run_command(argv, timeout)
    return None if code is None else (code, out)


NVIDIA_QUERY = [
    "nvidia-smi",
    "--query-gpu=name,memory.total,memory.used,utilization.gpu,temperature.gpu",
    "--format=csv,noheader,nounits",
]


def _num(text: str) -> float | None:
    try:
        return float(text.strip())
    except ValueError:
        return None  # "[N/A]", "[Not Supported]"


def parse_nvidia(output: str) -> list[dict[str, Any]]:
    gpus = []
    for line in output.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5 or not parts[0]:
            continue
        total, used = _num(parts[1]), _num(parts[2])
        gpus.append({
            "name": parts[0],
            "memory_total_gb": round((total or 0) / 1024, 3),  # nvidia-smi reports MiB
            "memory_used_gb": round((used or 0) / 1024, 3),
            "utilization_pct": _num(parts[3]),
            "temperature_c": _num(parts[4]),
        })
    return gpus


async def nvidia_gpus(runner: Runner, timeout: float) -> list[dict[str, Any]]:
    result = await runner(NVIDIA_QUERY, timeout)
    if result is None or result[0] != 0:
        return []
    return parse_nvidia(result[1])


_MAC_PRESSURE = {"1": "normal", "2": "warn", "4": "critical"}


async def macos_pressure(runner: Runner, timeout: float) -> str | None:
    result = await runner(["sysctl", "-n", "kern.memorystatus_vm_pressure_level"], timeout)
    if result is None or result[0] != 0:
        return None
    return _MAC_PRESSURE.get(result[1].strip())


def parse_pmset_therm(output: str) -> str | None:
    """``pmset -g therm`` prints CPU_Speed_Limit = <percent>; below 100 the OS is throttling."""
    for line in output.splitlines():
        if "CPU_Speed_Limit" in line and "=" in line:
            limit = _num(line.split("=", 1)[1])
            if limit is None:
                return None
            if limit >= 100:
                return "nominal"
            return "serious" if limit >= 50 else "critical"
    return None


async def macos_thermal(runner: Runner, timeout: float) -> str | None:
    result = await runner(["pmset", "-g", "therm"], timeout)
    if result is None or result[0] != 0:
        return None
    return parse_pmset_therm(result[1])


def linux_psi(path: Path = Path("/proc/pressure/memory")) -> float | None:
    """The share of the last 10 s in which some task stalled waiting for memory (percent)."""
    try:
        first = path.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    for field in first.split():
        if field.startswith("avg10="):
            return _num(field[len("avg10="):])
    return None
