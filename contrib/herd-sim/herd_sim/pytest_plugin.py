"""A pytest plugin (entry point ``pytest11``) for tests that need simulated Ollama machines:

    async def test_x(sim_fleet):
        fleet = await sim_fleet(profile_a, profile_b, time_scale=0.02)   # started, on 127.0.0.1

Every fleet it starts is stopped when the test ends. ``sims(*profiles)`` is the same at a
hundredth of real time (``herd_sim.testing`` has the helpers that go with it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from herd_sim import NodeProfile, SimFleet


@pytest.fixture
async def sim_fleet() -> AsyncIterator[Callable[..., Awaitable[SimFleet]]]:
    fleets: list[SimFleet] = []

    async def start(*profiles: NodeProfile, time_scale: float = 0.02) -> SimFleet:
        fleet = SimFleet(list(profiles), time_scale=time_scale)
        await fleet.start()
        fleets.append(fleet)
        return fleet

    yield start
    for fleet in fleets:
        await fleet.stop()


@pytest.fixture
def sims(sim_fleet: Callable[..., Awaitable[SimFleet]]) -> Callable[..., Awaitable[SimFleet]]:
    return lambda *profiles: sim_fleet(*profiles, time_scale=0.01)
