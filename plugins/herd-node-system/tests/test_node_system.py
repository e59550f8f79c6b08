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
