"""The node-agent sensor that makes an agent describe the simulated machine, not this one."""

import aiohttp
import attrs
from herd_sim import PROFILES, SimNode

from herd_kernel.api import NodeContext
from herd_kernel.models import Heartbeat, structure
from herd_kernel.testing import make_config, make_host


async def test_sensor_is_off_unless_asked_for():
    host = make_host("node-simhardware")
    assert host.sensors(make_config(host)) == []


async def test_sensor_reports_the_simulated_machine():
    profile = attrs.evolve(PROFILES["small"], loaded=())
    node = SimNode(profile, time_scale=0)
    await node.start()
    try:
        host = make_host("node-simhardware")
        config = make_config(host, {"FLEET_NODE_SIM_HARDWARE": "1",
                                    "FLEET_NODE_OLLAMA_HOST": node.url})
        [sensor] = host.sensors(config)
        async with aiohttp.ClientSession() as http:
            fragment = await sensor.read(NodeContext(config=config, node_id="n", http=http))
        hb = structure({"node_id": "n", **fragment}, Heartbeat)
        hw = node.hardware()
        assert hb.memory.total_gb == hw["memory_total_gb"]
        assert hb.cpu.cores_logical == profile.cores
        assert hb.extras["simulated"]["profile"] == profile.name
    finally:
        await node.stop()
