import threading

import pytest
from herd_node_system import SystemSensor, pressure_level

from herd_kernel.api import NodeContext
from herd_kernel.models import Heartbeat, structure
from herd_kernel.testing import make_config, make_host


@pytest.mark.parametrize("pct,level", [(0, "normal"), (84.9, "normal"), (85, "warn"), (95, "critical")])
def test_pressure_levels(pct, level):
    assert pressure_level(pct, 85, 95) == level


async def test_reading_is_a_valid_heartbeat_fragment(tmp_path):
    host = make_host("node-system")
    config = make_config(host, {"FLEET_NODE_DATA_DIR": str(tmp_path)})
    [sensor] = host.sensors(config)
    ctx = NodeContext(config=config, node_id="n", http=None)
    fragment = await sensor.read(ctx)
    hb = structure({"node_id": "n", **fragment}, Heartbeat)
    assert hb.memory.total_gb > 0 and hb.memory.available_gb <= hb.memory.total_gb
    assert hb.cpu.cores_logical >= 1
    assert hb.disk.total_gb > 0
    assert hb.memory.pressure in ("normal", "warn", "critical")


async def test_reads_happen_off_the_event_loop(tmp_path, monkeypatch):
    sensor = SystemSensor(tmp_path, 85, 95)
    seen = []
    original = sensor.read_sync

    def spy():
        seen.append(threading.current_thread() is threading.main_thread())
        return original()

    monkeypatch.setattr(sensor, "read_sync", spy)
    await sensor.read(None)
    assert seen == [False]


async def test_missing_data_dir_falls_back_to_root(tmp_path):
    fragment = await SystemSensor(tmp_path / "does-not-exist", 85, 95).read(None)
    assert fragment["disk"]["total_gb"] > 0


# --- external probes, through the runner seam (outputs below are hand-written samples in the
# --- documented formats; these commands do not exist on this Linux machine)

from collections import namedtuple  # noqa: E402

from herd_node_system import probes, thermal_from_temperatures, worst  # noqa: E402

NVIDIA_SAMPLE = "NVIDIA GeForce RTX 4090, 24564, 1234, 7, 41\nNVIDIA RTX A2000, 6138, [N/A], [N/A], 50\n"


def fake_runner(outputs):
    calls = []

    async def run(argv, timeout):
        calls.append(argv[0])
        return outputs.get(argv[0])

    run.calls = calls
    return run


async def test_nvidia_gpus_are_reported(tmp_path):
    sensor = SystemSensor(tmp_path, 85, 95, runner=fake_runner({"nvidia-smi": (0, NVIDIA_SAMPLE)}),
                          platform="linux")
    fragment = await sensor.read(None)
    hb = structure({"node_id": "n", **fragment}, Heartbeat)
    assert [g.name for g in hb.gpus] == ["NVIDIA GeForce RTX 4090", "NVIDIA RTX A2000"]
    assert hb.gpus[0].memory_total_gb == pytest.approx(23.988, abs=0.01)
    assert hb.gpus[1].utilization_pct is None and hb.gpus[1].memory_used_gb == 0


async def test_no_gpu_and_failing_commands_are_normal(tmp_path):
    runner = fake_runner({"nvidia-smi": (9, "NVIDIA-SMI has failed")})
    fragment = await SystemSensor(tmp_path, 85, 95, runner=runner, platform="linux").read(None)
    assert "gpus" not in fragment
    assert runner.calls == ["nvidia-smi"]  # macOS probes are not even tried on Linux


async def test_macos_pressure_and_throttling_come_from_the_os(tmp_path):
    runner = fake_runner({"sysctl": (0, "4\n"),
                          "pmset": (0, "CPU_Scheduler_Limit \t= 100\nCPU_Available_CPUs \t= 8\n"
                                       "CPU_Speed_Limit \t= 70\n")})
    sensor = SystemSensor(tmp_path, 85, 95, runner=runner, platform="darwin", machine="arm64")
    fragment = await sensor.read(None)
    assert fragment["memory"]["pressure"] == "critical"
    assert fragment["memory"]["unified"] is True
    assert fragment["thermal"] == {"state": "serious", "temperature_c": None, "source": "pmset"}


def test_pmset_and_psi_parsing(tmp_path):
    assert probes.parse_pmset_therm("CPU_Speed_Limit = 100") == "nominal"
    assert probes.parse_pmset_therm("CPU_Speed_Limit = 30") == "critical"
    assert probes.parse_pmset_therm("Note: No thermal warning level has been recorded") is None
    psi = tmp_path / "memory"
    psi.write_text("some avg10=12.50 avg60=3.00 avg300=1.00 total=123\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    assert probes.linux_psi(psi) == 12.5
    assert probes.linux_psi(tmp_path / "missing") is None
    assert worst("normal", "warn", None) == "warn" and worst(None) == "normal"


def test_thermal_state_from_temperatures():
    T = namedtuple("T", "label current high critical")
    assert thermal_from_temperatures({})["state"] == "unknown"
    hot = {"coretemp": [T("a", 50.0, 80.0, 100.0), T("b", 92.0, 80.0, 100.0)]}
    assert thermal_from_temperatures(hot) == {"state": "serious", "temperature_c": 92.0, "source": "psutil"}
    assert thermal_from_temperatures({"x": [T("a", 40.0, None, None)]})["state"] == "nominal"


async def test_the_real_runner_handles_missing_slow_and_real_commands(tmp_path, monkeypatch):
    slow = tmp_path / "slowcmd"
    slow.write_text("#!/bin/sh\nsleep 30\n")
    slow.chmod(0o755)
    fast = tmp_path / "fastcmd"
    fast.write_text("#!/bin/sh\necho hello\n")
    fast.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    assert await probes.run(["no-such-command-here"], 1) is None
    assert await probes.run(["fastcmd"], 5) == (0, "hello\n")
    assert await probes.run(["slowcmd"], 0.2) is None  # killed, not waited for


async def test_cpu_is_measured_between_reads_whatever_thread_reads(tmp_path):
    import asyncio

    sensor = SystemSensor(tmp_path, 85, 95, runner=fake_runner({}), platform="linux")
    first = await sensor.read(None)
    assert first["cpu"]["utilization_pct"] == 0.0  # no interval yet
    deadline = asyncio.get_running_loop().time() + 0.3
    while asyncio.get_running_loop().time() < deadline:
        sum(i * i for i in range(20000))  # keep a CPU busy between the two reads
    readings = await asyncio.gather(*(asyncio.to_thread(sensor._cpu_percent) for _ in range(4)))
    assert readings[0] > 0 or max(readings) > 0
    assert all(0 <= r <= 100 for r in readings)
