"""A node-agent sensor plugin (entry point ``node-simhardware``) for agents in front of a simulated
node: it reports the simulated machine's memory and cores (from ``/_sim/hardware``) instead of
the real machine's, so a demo fleet on one computer looks like the fleet it pretends to be.

It does nothing unless ``FLEET_NODE_SIM_HARDWARE`` is true, which ``herd-sim --router-url`` and
``herd --demo`` set for the agents they start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from herd_kernel.api import NodeContext
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl

SETTINGS = (
    Setting(env="FLEET_NODE_SIM_HARDWARE", type=bool, default=False, scope="node",
            help="Report the simulated machine behind FLEET_NODE_OLLAMA_HOST (herd-sim) instead "
            "of this one. Only for agents in front of herd-sim nodes."),
)


class SimHardwareSensor:
    name = "sim-hardware"
    order = 90  # after the system sensor, whose cpu and memory it replaces

    def __init__(self, ollama_url: str) -> None:
        self.url = ollama_url.rstrip("/") + "/_sim/hardware"

    async def read(self, ctx: NodeContext) -> Mapping[str, Any]:
        async with ctx.http.get(self.url, timeout=aiohttp.ClientTimeout(total=2)) as response:
            response.raise_for_status()
            hw = await response.json()
        return {
            "cpu": {"cores_physical": hw["cores"], "cores_logical": hw["cores"],
                    "utilization_pct": 0.0},
            "memory": {"total_gb": hw["memory_total_gb"], "used_gb": hw["memory_used_gb"],
                       "available_gb": hw["memory_available_gb"], "pressure": "normal"},
            "extras": {"simulated": {"profile": hw["profile"], "chip": hw["chip"],
                                     "tokens_per_s": hw["tokens_per_s"]}},
        }


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_node_sensors(config: Config) -> list[SimHardwareSensor]:
    if not config["FLEET_NODE_SIM_HARDWARE"]:
        return []
    return [SimHardwareSensor(config["FLEET_NODE_OLLAMA_HOST"])]
