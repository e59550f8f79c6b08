"""Real mDNS scenarios for test_discovery_mdns.py, run ONLY inside a fresh network namespace:

    unshare -n sh -c 'ip link set lo up && exec python mdns_netns_scenario.py SCENARIO DIR'

Each scenario starts a real router (and sometimes an impostor) plus real node agents that have
no router URL, in one event loop, and prints one JSON line with what happened. The script
refuses to run where any interface other than loopback exists, so it can never send mDNS onto
a real network.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from herd_kernel import __version__
from herd_kernel.app import SERVICES, create_app
from herd_kernel.testing import make_config, make_host
from herd_node.agent import NodeAgent

PLUGINS = "backend-ollama,discovery-mdns"
NOWHERE = "http://127.0.0.1:9"  # no Ollama: the nodes report it unreachable, which is fine here
SECRET = "correct horse battery staple"
BUDGET = 9.0  # seconds for one scenario, start to finish


def refuse_unless_isolated() -> None:
    # if_nameindex asks the kernel about this process's namespace (/sys/class/net may not)
    interfaces = sorted(name for _, name in socket.if_nameindex())
    if interfaces != ["lo"]:
        sys.exit(f"refusing to run: interfaces {interfaces} (run inside `unshare -n`)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Harness:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.runners: list[web.AppRunner] = []
        self.agents: list[tuple[NodeAgent, asyncio.Task[None]]] = []
        self.withdrawals: list[Any] = []

    async def router(self, name: str, env: dict[str, str] | None = None) -> tuple[str, Any]:
        port = free_port()
        host = make_host(PLUGINS)
        config = make_config(host, {
            "FLEET_DATA_DIR": str(self.root / name),
            "FLEET_HOST": "127.0.0.1",
            "FLEET_PORT": str(port),
            **(env or {}),
        })
        app = create_app(config, host)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()  # announces, as `herd` does, before the listener starts
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.runners.append(runner)
        return f"http://127.0.0.1:{port}", app[SERVICES]

    def agent(self, node_id: str, env: dict[str, str] | None = None) -> NodeAgent:
        host = make_host(PLUGINS)
        config = make_config(
            host,
            {"FLEET_NODE_DATA_DIR": str(self.root / node_id), **(env or {})},
            FLEET_NODE_ROUTER_URL="",
            FLEET_NODE_OLLAMA_HOST=NOWHERE,
            FLEET_NODE_NODE_ID=node_id,
            FLEET_NODE_HEARTBEAT_INTERVAL=0.2,
        )
        agent = NodeAgent(config, host)
        self.agents.append((agent, asyncio.create_task(agent.run())))
        return agent

    async def close(self) -> None:
        """Agents first (they drain), then announcements and servers; safe to call twice."""
        agents, self.agents = self.agents, []
        for agent, _ in agents:
            agent.stop()
        await asyncio.gather(*(task for _, task in agents), return_exceptions=True)
        withdrawals, self.withdrawals = self.withdrawals, []
        for withdraw in withdrawals:
            await withdraw()
        runners, self.runners = self.runners, []
        for runner in reversed(runners):
            await runner.cleanup()


async def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


def announcements(browse: Any) -> list[dict[str, Any]]:
    from herd_discovery_mdns.records import decode_txt

    return [
        {"name": name, "addresses": info.parsed_addresses(), "port": info.port,
         "txt": decode_txt(info.properties)}
        for name, info in sorted(browse.resolved.items())
    ]


async def discover(h: Harness) -> dict[str, Any]:
    """A router and two nodes with no router URL find each other; the withdrawal is seen."""
    from herd_discovery_mdns import MdnsDiscovery, _Browse

    url, services = await h.router("router")
    a, b = h.agent("node-a"), h.agent("node-b")
    both = await wait_until(lambda: {"node-a", "node-b"} <= set(services.fleet.nodes), 7.0)
    watcher = MdnsDiscovery(make_config(make_host(PLUGINS)))
    async with _Browse(watcher._zeroconf(), "_herd._tcp.local.") as browse:
        await wait_until(lambda: browse.resolved, 2.0)
        seen = announcements(browse)
        await h.close()  # stops the agents, then the router withdraws its announcement
        gone = await wait_until(lambda: not browse.resolved, 2.0)
    return {
        "router": url,
        "registered": sorted(services.fleet.nodes),
        "both_registered": both,
        "agents_router_url": [a.router_url, b.router_url],
        "announced": seen,
        "withdrawn_seen": gone,
        "version": __version__,
    }


async def secret(h: Harness) -> dict[str, Any]:
    """With a fleet secret on the router: a node without it is refused, a node with it joins."""
    url, services = await h.router("router", {"FLEET_SECRET": SECRET})
    outsider = h.agent("outsider")
    member = h.agent("member", {"FLEET_NODE_SECRET": SECRET})
    joined = await wait_until(lambda: "member" in services.fleet.nodes, 7.0)
    refused = await wait_until(lambda: outsider.failures >= 3, 2.0)
    return {
        "router": url,
        "registered": sorted(services.fleet.nodes),
        "member_joined": joined,
        "member_router_url": member.router_url,
        "outsider_refused": refused,
        "outsider_router_url": outsider.router_url,
        "outsider_heartbeats_accepted": outsider.heartbeats_sent,
        "outsider_failures": outsider.failures,
    }


async def impostor(h: Harness) -> dict[str, Any]:
    """An impostor announces the same service (and the same instance name) and answers
    /fleet/hello with a wrong proof; a node with the secret ends up with the real router."""
    from herd_discovery_mdns import MdnsDiscovery

    hits: list[str] = []

    async def hello(request: web.Request) -> web.Response:
        hits.append("hello")
        # the lowest possible router id, so "lowest id wins" alone would pick the impostor
        return web.json_response({"service": "herd", "version": __version__,
                                  "router_id": "000000000000", "secured": True, "proof": "0" * 64})

    async def heartbeat(request: web.Request) -> web.Response:
        hits.append("heartbeat")
        return web.json_response({"status": "ok", "node_status": "online"})

    fake = web.Application()
    fake.router.add_get("/fleet/hello", hello)
    fake.router.add_post("/heartbeat", heartbeat)
    fake_runner = web.AppRunner(fake, access_log=None, handle_signals=False)
    await fake_runner.setup()
    fake_port = free_port()
    await web.TCPSite(fake_runner, "127.0.0.1", fake_port).start()
    h.runners.append(fake_runner)
    fake_url = f"http://127.0.0.1:{fake_port}"
    # announced with the plugin's own router side, claiming a secret (TXT secured=1)
    fake_config = make_config(make_host(PLUGINS), {"FLEET_SECRET": "not the fleet secret"})
    h.withdrawals.append(await MdnsDiscovery(fake_config).announce(fake_url, fake_config))
    await asyncio.sleep(0.3)  # let the impostor take the name first: the real router is renamed

    url, services = await h.router("router", {"FLEET_SECRET": SECRET})
    member = h.agent("member", {"FLEET_NODE_SECRET": SECRET})
    joined = await wait_until(lambda: "member" in services.fleet.nodes, 7.0)
    [discovery] = member.discoveries
    return {
        "router": url,
        "impostor": fake_url,
        "registered": sorted(services.fleet.nodes),
        "member_joined": joined,
        "member_router_url": member.router_url,
        "impostor_hits": hits,
        "candidates": [c.describe() for c in discovery.last_candidates],
    }


SCENARIOS = {"discover": discover, "secret": secret, "impostor": impostor}


async def main(name: str, root: Path) -> dict[str, Any]:
    h = Harness(root)
    started = time.monotonic()
    try:
        result = await asyncio.wait_for(SCENARIOS[name](h), BUDGET)
    finally:
        await h.close()
    result["elapsed_s"] = round(time.monotonic() - started, 2)
    return result


if __name__ == "__main__":
    refuse_unless_isolated()
    # logs to stderr (the test shows them on failure); stdout carries only the JSON result
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    scenario, directory = sys.argv[1], Path(sys.argv[2])
    print(json.dumps(asyncio.run(main(scenario, directory))))
