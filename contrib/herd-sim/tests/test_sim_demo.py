"""``herd --demo`` as herd-sim offers it (entry point ``demo-sim``): simulated machines cycling
through the profiles, each with a node agent reporting to a real router, stopped as a whole."""

import aiohttp
import pytest
from herd_sim import PROFILES

from herd_kernel.testing import make_config, make_host, wait_for

PLUGINS = "backend-ollama,node-simhardware"


async def test_demo_starts_machines_with_agents_that_describe_them(herd_router, herd_agent):
    router = await herd_router(plugins="backend-ollama")
    host = make_host(f"demo-sim,{PLUGINS}")
    [demo] = host.demo_fleets(make_config(host))
    started: dict[str, str] = {}

    async def start_agent(node_id, **settings):
        ollama_url = settings.pop("FLEET_NODE_OLLAMA_HOST")
        started[node_id] = ollama_url
        await herd_agent(router.url, ollama_url, node_id, plugins=PLUGINS,
                         env={env: str(value) for env, value in settings.items()})

    stop = await demo.start(router.url, 2, start_agent)
    try:
        assert list(started) == ["sim-large", "sim-medium"]

        async def status() -> dict:
            async with aiohttp.ClientSession() as http, http.get(f"{router.url}/fleet/status") as r:
                return await r.json()

        async def both_online() -> bool:
            nodes = (await status())["nodes"]
            return len(nodes) == 2 and all(n["status"] == "online" and n["ollama"] for n in nodes)

        await wait_for(both_online, timeout=10)
        for node in (await status())["nodes"]:
            profile = PROFILES[node["node_id"].removeprefix("sim-")]
            # the simulated machine, not this one: herd-sim's sensor was switched on for it
            assert node["memory"]["total_gb"] == pytest.approx(profile.memory_gb, rel=0.01)
            assert node["ollama"]["num_parallel"] == profile.num_parallel
    finally:
        await stop()
    async with aiohttp.ClientSession() as http:
        for url in started.values():
            with pytest.raises(aiohttp.ClientConnectionError):
                await http.get(f"{url}/api/version")
