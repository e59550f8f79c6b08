"""Request shapers through the kernel, over real sockets (a real router, a real node agent, a
simulated Ollama): a shaper that raises is skipped and the request is served unshaped, logged
once; a shaper's change is applied and announced."""

from __future__ import annotations

import json

import aiohttp
import attrs
import pytest
from herd_sim import PROFILES
from structlog.testing import capture_logs

from herd_kernel.api import Change, Shaping
from herd_kernel.hookspecs import hookimpl
from herd_kernel.testing import wait_for

MODEL = "llama3.2:3b"


class Broken:
    name = "broken"
    order = 0

    def substitute(self, route, ctx):
        raise RuntimeError("substitute went wrong")

    async def provide(self, route, ctx):
        raise RuntimeError("provide went wrong")

    def shape(self, route, body, decision, ctx):
        raise RuntimeError("shape went wrong")


class Junk:
    """Returns what is not a record, then a change the body does not fit."""

    name = "junk"
    order = 1

    def substitute(self, route, ctx):
        return "another-model"

    def shape(self, route, body, decision, ctx):
        return Shaping(changes=(Change(field="options.seed", old=12345, new=1, header="X-Junk",
                                       reason="seed changed"),))


class Seed:
    """A well-behaved shaper: sets options.seed (absent) to 7."""

    name = "seed"
    order = 2

    def shape(self, route, body, decision, ctx):
        if route.api != "ollama":
            return None
        options = body.get("options") or {}
        return Shaping(changes=(Change(field="options.seed", old=options.get("seed"), new=7,
                                       header="X-Seed", reason="seed set to 7"),))


class Plugin:
    def __init__(self, *shapers):
        self.shapers = list(shapers)

    @hookimpl
    def herd_request_shapers(self, config):
        return self.shapers


@pytest.fixture
async def start(sim_fleet, herd_router, herd_agent):
    async def start(*shapers):
        profile = attrs.evolve(PROFILES["medium"], name="solo", models=(MODEL,), loaded=(MODEL,),
                               tokens_per_s=2000.0)
        fleet = await sim_fleet(profile, time_scale=0.01)
        router = await herd_router(plugins="backend-ollama", extra=[Plugin(*shapers)])
        await herd_agent(router.url, fleet.nodes["solo"].url, "solo", interval=0.1)
        await wait_for(lambda: MODEL in getattr(router.services.fleet.nodes.get("solo"),
                                                "loaded", {}))
        return router

    return start


async def chat(url, **extra):
    body = {"model": MODEL, "stream": False, "options": {"num_predict": 4},
            "messages": [{"role": "user", "content": "hi"}], **extra}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/chat", json=body) as r:
            return r.status, r.headers, json.loads(await r.read())


async def test_a_raising_shaper_leaves_the_request_served_unshaped(start):
    router = await start(Broken(), Junk())
    with capture_logs() as logs:
        for _ in range(2):
            status, headers, payload = await chat(router.url)
            assert status == 200, payload
            assert payload["model"] == MODEL and payload["message"]["content"]
            assert headers["X-Fleet-Served-Model"] == MODEL
            assert "X-Junk" not in headers
            trace = router.services.recent_traces[-1]
            assert trace.status == "completed" and trace.original_model == MODEL
            assert "broken" not in trace.details and "junk" not in trace.details
    failed = [e for e in logs if e["event"].startswith("request shaper failed")]
    # each broken shaper once, whatever moment it failed at and however many requests
    assert sorted(e["shaper"] for e in failed) == ["broken", "junk"]


async def test_a_change_is_applied_and_announced_beside_a_broken_shaper(start):
    router = await start(Broken(), Seed())
    status, headers, payload = await chat(router.url)
    assert status == 200, payload
    assert headers["X-Seed"] == "seed set to 7"
    assert router.services.recent_traces[-1].details["seed"] == "seed set to 7"
