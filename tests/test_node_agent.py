"""The node agent against a real router on loopback, with test sensors (no Ollama needed)."""

import asyncio

from herd_kernel.app import SERVICES, create_app
from herd_kernel.hookspecs import hookimpl
from herd_kernel.testing import make_config, make_host, wait_for
from herd_node.agent import NodeAgent


class Sensors:
    """Test plugin: one good sensor, one that raises, one that hangs, one adding extras."""

    class Good:
        name, order = "good", 1

        async def read(self, ctx):
            return {"memory": {"total_gb": 64.0, "used_gb": 1.0, "available_gb": 63.0}}

    class Raises:
        name, order = "raises", 2

        async def read(self, ctx):
            raise OSError("sensor exploded")

    class Hangs:
        name, order = "hangs", 3

        async def read(self, ctx):
            await asyncio.sleep(3600)

    class Extra:
        name, order = "extra", 4

        async def read(self, ctx):
            return {"extras": {"workload": "idle"}}

    @hookimpl
    def herd_node_sensors(self, config):
        return [self.Good(), self.Raises(), self.Hangs(), self.Extra()]


def agent_for(router_url, tmp_path, node_id="n1", interval=0.2, plugins="", extra=()):
    host = make_host(plugins, extra)
    config = make_config(host, {"FLEET_NODE_DATA_DIR": str(tmp_path)},
                         FLEET_NODE_ROUTER_URL=router_url, FLEET_NODE_NODE_ID=node_id,
                         FLEET_NODE_OLLAMA_HOST="http://127.0.0.1:9",
                         FLEET_NODE_HEARTBEAT_INTERVAL=interval)
    return NodeAgent(config, host)


async def test_sensors_merge_and_a_bad_sensor_costs_nothing_else(herd_router, tmp_path):
    router = await herd_router()
    agent = agent_for(router.url, tmp_path, plugins="none-but-extra", extra=[Sensors()])
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(lambda: "n1" in router.services.fleet.nodes, timeout=10)
        hb = router.services.fleet.nodes["n1"].heartbeat
        assert hb.memory.total_gb == 64.0
        assert hb.extras == {"workload": "idle"}
        assert hb.agent_version
    finally:
        agent.stop()
        await task
    # stopping drains: the router takes the node offline at once
    assert router.services.fleet.nodes["n1"].status == "offline"


async def router_on(port, tmp_path):
    """A router that starts listening on ``port`` only now (an agent is already trying it)."""
    from aiohttp import web

    host = make_host("backend-ollama")
    app = create_app(make_config(host, {"FLEET_DATA_DIR": str(tmp_path / "r")}), host)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return app, runner


async def test_agent_survives_the_router_being_away(herd_router, tmp_path, unused_tcp_port):
    url = f"http://127.0.0.1:{unused_tcp_port}"
    agent = agent_for(url, tmp_path, plugins="backend-ollama", interval=0.1)
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(lambda: agent.failures >= 2, timeout=10)
        assert not task.done()
        # a router appears on that port: the agent registers without being restarted
        app, runner = await router_on(unused_tcp_port, tmp_path)
        try:
            await wait_for(lambda: "n1" in app[SERVICES].fleet.nodes, timeout=10)
            node = app[SERVICES].fleet.nodes["n1"]
            # its Ollama (port 9) does not answer: it is known but offers no model
            assert node.heartbeat.endpoints[0].healthy is False and not node.available
            # the router registers the node before its reply reaches the agent
            await wait_for(lambda: agent.failures == 0)
        finally:
            agent.stop()
            await task
            await runner.cleanup()
    finally:
        agent.stop()
        await asyncio.gather(task, return_exceptions=True)


class PauseVotes:
    """One sensor pauses the node; a later one says 'not paused'. The pause must stand."""

    class Pauses:
        name, order = "pauses", 1

        async def read(self, ctx):
            return {"paused": True}

    class Denies:
        name, order = "denies", 2

        async def read(self, ctx):
            assert ctx.budget > 0
            return {"paused": False}

    @hookimpl
    def herd_node_sensors(self, config):
        return [self.Pauses(), self.Denies()]


async def test_any_sensor_can_pause_and_a_later_one_cannot_undo_it(herd_router, herd_agent):
    router = await herd_router()
    await herd_agent(router.url, "http://127.0.0.1:9", "n1", plugins="none", extra=[PauseVotes()])
    assert router.services.fleet.nodes["n1"].heartbeat.paused is True
    assert not router.services.fleet.nodes["n1"].routable


async def test_agent_rides_out_an_ollama_restart(herd_router, herd_agent):
    from herd_sim import PROFILES, SimNode

    node = SimNode(PROFILES["small"], time_scale=0)
    await node.start()
    try:
        router = await herd_router(plugins="backend-ollama")
        await herd_agent(router.url, node.url, "n1", plugins="backend-ollama", interval=0.1)
        state = router.services.fleet.nodes["n1"]
        await wait_for(lambda: state.heartbeat.endpoints[0].healthy and state.available)
        await node.stop()  # Ollama goes away: the node stays known but offers nothing
        await wait_for(lambda: not state.heartbeat.endpoints[0].healthy)
        assert not state.available and state.status == "online"
        await node.start()  # same port again: the next heartbeats bring its models back
        await wait_for(lambda: state.heartbeat.endpoints[0].healthy and state.available)
    finally:
        await node.stop()


async def test_until_its_router_first_answers_an_agent_looks_again_at_once(
        tmp_path, unused_tcp_port):
    """At boot a refused connection means the router is not listening yet: the agent retries
    every few tens of milliseconds (backing off 0.1, 0.2, 0.4 s... it would take minutes to fail
    forty times), so a node started beside its router is routable as soon as the router is."""
    agent = agent_for(f"http://127.0.0.1:{unused_tcp_port}", tmp_path, plugins="backend-ollama",
                      interval=60)
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(lambda: agent.failures >= 40, timeout=20)
        assert agent.refused and agent.heartbeats_sent == 0
    finally:
        agent.stop()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_agent_started_before_its_router_joins_soon_after_it_answers(
        tmp_path, unused_tcp_port):
    """Both start at boot: a failed heartbeat is retried after 0.1 s, backing off to the
    interval, so the node is routable a moment after the router answers, not an interval later
    (the interval here is 60 s; the wait below gives up long before it)."""
    url = f"http://127.0.0.1:{unused_tcp_port}"
    agent = agent_for(url, tmp_path, plugins="backend-ollama", interval=60)
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(lambda: agent.failures >= 1, timeout=10)
        app, runner = await router_on(unused_tcp_port, tmp_path)
        try:
            await wait_for(lambda: "n1" in app[SERVICES].fleet.nodes, timeout=15)
            await wait_for(lambda: agent.heartbeats_sent == 1)
        finally:
            agent.stop()
            await task
            await runner.cleanup()
    finally:
        agent.stop()
        await asyncio.gather(task, return_exceptions=True)
