"""``herd --demo`` (entry point ``demo-sim``): the router starts simulated machines of different
sizes on loopback, with a node agent in front of each, so Herd can be tried with no second
computer. The emulator loads only when the demo starts, not when the router loads its plugins.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Sequence

from herd_kernel.config import Config
from herd_kernel.hookspecs import hookimpl


class SimDemo:
    """Simulated machines cycling through the profiles (``sim-large``, ``sim-medium``, ...)."""

    name = "herd-sim"

    def __init__(self, config: Config) -> None:
        self.config = config

    async def start(
        self, router_url: str, nodes: int, start_agent: Callable[..., Awaitable[None]]
    ) -> Callable[[], Awaitable[None]]:
        from herd_sim.catalogue import PROFILES
        from herd_sim.cli import fleet_profiles
        from herd_sim.fleet import SimFleet

        fleet = SimFleet(fleet_profiles(list(PROFILES), nodes), host="127.0.0.1")
        await fleet.start()
        try:
            for name, node in fleet.nodes.items():
                settings: dict[str, object] = {}
                if "FLEET_NODE_SIM_HARDWARE" in self.config:  # this package's sensor is loaded
                    settings["FLEET_NODE_SIM_HARDWARE"] = True  # the simulated machine's memory
                if "FLEET_NODE_OLLAMA_NUM_PARALLEL" in self.config:
                    # what the simulated machine's OLLAMA_NUM_PARALLEL would make its agent say
                    settings["FLEET_NODE_OLLAMA_NUM_PARALLEL"] = node.profile.num_parallel
                await start_agent(name, FLEET_NODE_OLLAMA_HOST=node.url, **settings)
                print(f"  simulated node {name} at {node.url}", file=sys.stderr)
        except BaseException:
            await fleet.stop()
            raise
        return fleet.stop


@hookimpl
def herd_demo_fleet(config: Config) -> Sequence[SimDemo]:
    return [SimDemo(config)]
