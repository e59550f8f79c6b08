"""Tests for herd-discovery-mdns.

Unit tests run here and never create a Zeroconf instance. Everything that sends mDNS runs in
``mdns_netns_scenario.py``, in a subprocess inside a fresh network namespace (``unshare -n``),
so nothing reaches the network of the machine running the tests.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import herd_discovery_mdns
import pytest
import zeroconf
from aiohttp import web
from herd_discovery_mdns import MdnsDiscovery, _check_service, _hello, isolation_problem
from herd_discovery_mdns.records import (
    Candidate,
    announced_addresses,
    candidate_urls,
    instance_name,
    parse_interfaces,
    rank,
    server_label,
    service_txt,
    split_url,
)
from zeroconf.asyncio import AsyncServiceInfo

import herd_kernel
from herd_kernel.config import SettingError
from herd_kernel.hookspecs import hookimpl
from herd_kernel.testing import make_config, make_host, wait_for
from herd_node.agent import NodeAgent

SCENARIO = Path(__file__).with_name("mdns_netns_scenario.py")
SECRET = "correct horse battery staple"


@pytest.fixture(autouse=True)
def no_zeroconf_in_this_process(monkeypatch):
    """This process is on the machine's real network: creating a Zeroconf here is a bug."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("a Zeroconf instance was created outside a network namespace")

    monkeypatch.setattr(zeroconf.Zeroconf, "__init__", refuse)


# --- what the router announces -------------------------------------------------------------------


def test_txt_record_is_exact_and_carries_the_real_version():
    assert service_txt(secured=False) == {
        "path": "/", "version": herd_kernel.__version__, "secured": "0", "api": "1",
    }
    assert service_txt(secured=True)["secured"] == "1"


def test_settings_are_declared_with_their_defaults():
    host = make_host("discovery-mdns")
    config = make_config(host)
    assert config["FLEET_MDNS"] is True
    assert config["FLEET_MDNS_SERVICE_TYPE"] == "_herd._tcp.local."
    assert config["FLEET_NODE_MDNS_SERVICE_TYPE"] == "_herd._tcp.local."
    assert config["FLEET_MDNS_SERVICE_NAME"] == ""  # "Herd router on <host name>"
    assert config["FLEET_MDNS_INTERFACES"] == ""  # every interface
    [discovery] = host.discoveries(config)
    assert discovery.name == "mdns" and discovery.interfaces == []


def test_fleet_mdns_false_registers_no_discovery():
    host = make_host("discovery-mdns")
    assert host.discoveries(make_config(host, {"FLEET_MDNS": "false"})) == []


def test_interfaces_are_ipv4_addresses():
    assert parse_interfaces(" 192.168.1.5, 10.0.0.2,192.168.1.5 ") == ["192.168.1.5", "10.0.0.2"]
    host = make_host("discovery-mdns")
    for bad in ("eth0", "fe80::1"):
        with pytest.raises(SettingError, match="FLEET_MDNS_INTERFACES"):
            host.discoveries(make_config(host, {"FLEET_MDNS_INTERFACES": bad}))


@pytest.mark.parametrize(
    "bind,local,interfaces,expected",
    [
        # bound everywhere: the machine's LAN addresses, never loopback
        ("0.0.0.0", ["127.0.0.1", "192.168.1.5", "10.0.0.2"], [], ["192.168.1.5", "10.0.0.2"]),
        ("", ["127.0.0.1", "192.168.1.5"], [], ["192.168.1.5"]),
        # ...restricted to the interfaces mDNS may use
        ("0.0.0.0", ["127.0.0.1", "192.168.1.5", "10.0.0.2"], ["10.0.0.2"], ["10.0.0.2"]),
        ("0.0.0.0", ["127.0.0.1", "192.168.1.5"], ["127.0.0.1"], ["127.0.0.1"]),
        # a machine (or namespace) with loopback only is reachable on loopback only
        ("0.0.0.0", ["127.0.0.1"], [], ["127.0.0.1"]),
        # bound to one address: that address, plus 127.0.0.1 for another loopback address
        ("192.168.1.5", ["127.0.0.1", "192.168.1.5"], [], ["192.168.1.5"]),
        ("127.0.0.1", [], [], ["127.0.0.1"]),
        ("127.0.1.1", [], [], ["127.0.1.1", "127.0.0.1"]),
        # IPv6 binds announce nothing: IPv4 only
        ("::1", [], [], []),
        ("fe80::1", [], [], []),
    ],
)
def test_announced_addresses(bind, local, interfaces, expected):
    assert announced_addresses(bind, local, interfaces) == expected


async def test_a_host_name_bind_is_resolved_without_blocking():
    discovery = MdnsDiscovery(make_config(make_host("discovery-mdns")))
    assert "127.0.0.1" in await discovery._addresses_for("localhost")


def test_names():
    assert instance_name("", "studio") == "Herd router on studio"
    assert instance_name("Kitchen router", "studio") == "Kitchen router"
    assert instance_name("", "mac.example.lan") == "Herd router on mac example lan"
    long = instance_name("é" * 80, "x")
    assert len(long.encode()) <= 58 and long == "é" * 29
    assert server_label("Studio.local", "abc123") == "studio-herd-abc123.local."
    assert server_label("___", "abc123") == "herd-herd-abc123.local."


def test_split_url():
    assert split_url("http://0.0.0.0:11435") == ("0.0.0.0", 11435)
    assert split_url("http://localhost") == ("localhost", 80)


# --- how a node reads an answer -------------------------------------------------------------------


def test_candidate_urls_are_ipv4_lan_first_and_stable():
    urls = candidate_urls(["127.0.0.1", "fe80::1", "192.168.1.9", "10.0.0.2"], 11435, {"path": "/"})
    assert urls == ["http://10.0.0.2:11435", "http://192.168.1.9:11435", "http://127.0.0.1:11435"]
    assert candidate_urls(["10.0.0.2"], 80, {"path": "/herd/"}) == ["http://10.0.0.2:80/herd"]
    # a path that could smuggle another host or query is ignored
    for path in ("@evil", "//evil.example", "/a?b", "x"):
        assert candidate_urls(["10.0.0.2"], 80, {"path": path}) == ["http://10.0.0.2:80"]
    assert candidate_urls(["10.0.0.2"], 0, {}) == []


def candidate(url: str, router_id: str, *, secured: bool = False, proved: bool = False):
    return Candidate(url=url, service=f"{router_id}._herd._tcp.local.", router_id=router_id,
                     version="0.1.0", claims_secured=secured, proved=proved)


def test_rank_prefers_proof_then_a_matching_secured_claim_then_the_lowest_id():
    low = candidate("http://10.0.0.9:1", "000", secured=True)
    open_ = candidate("http://10.0.0.8:1", "555")
    real = candidate("http://10.0.0.7:1", "fff", secured=True, proved=True)
    assert rank([low, open_, real], has_secret=True)[0] is real
    assert [c.router_id for c in rank([low, open_], has_secret=True)] == ["000", "555"]
    assert [c.router_id for c in rank([low, open_], has_secret=False)] == ["555", "000"]
    # ties fall to the router id, then the URL: every node picks the same one
    a, b = candidate("http://10.0.0.2:1", "abc"), candidate("http://10.0.0.1:1", "abc")
    assert rank([a, b], has_secret=False) == rank([b, a], has_secret=False) == [b, a]


def test_each_call_offers_a_router_not_yet_refused():
    """The agent asks again only after refusing the last answer: rotate through them."""
    discovery = MdnsDiscovery(make_config(make_host("discovery-mdns")))
    found = [candidate("http://10.0.0.1:1", "aaa"), candidate("http://10.0.0.2:1", "bbb")]
    picks = [discovery.choose(found, has_secret=False) for _ in range(3)]
    assert picks == ["http://10.0.0.1:1", "http://10.0.0.2:1", "http://10.0.0.1:1"]
    # ...but a router that proved the secret is never passed over for one that did not
    proved = [candidate("http://10.0.0.3:1", "zzz", proved=True), *found]
    discovery = MdnsDiscovery(make_config(make_host("discovery-mdns")))
    assert {discovery.choose(proved, has_secret=True) for _ in range(3)} == {"http://10.0.0.3:1"}


async def test_a_failed_search_waits_out_its_timeout(monkeypatch):
    """The agent calls again at once on None: a search that fails must not spin."""
    discovery = MdnsDiscovery(make_config(make_host("discovery-mdns")))

    async def broken(config, deadline):
        raise OSError(19, "No such device")

    monkeypatch.setattr(discovery, "_search", broken)
    started = time.monotonic()
    assert await discovery.find_router(discovery_config(), timeout=0.3) is None
    assert time.monotonic() - started >= 0.29


def discovery_config(**env: str):
    return make_config(make_host("discovery-mdns"), env)


def test_this_test_process_may_not_use_mdns():
    # pytest runs on the machine's own network here: the plugin must refuse to start zeroconf
    # (a namespace run would pass the check, and is where the scenarios below go)
    if len(socket.if_nameindex()) > 1:
        assert isolation_problem() is not None


async def test_router_and_agent_loaded_here_stay_off_the_network():
    """Other tests start routers with every plugin installed; in a test run outside a namespace
    this plugin must announce nothing and search nothing (and say so)."""
    if isolation_problem() is None:
        pytest.skip("this test process is in an isolated namespace")
    discovery = MdnsDiscovery(make_config(make_host("discovery-mdns")))
    withdraw = await discovery.announce("http://127.0.0.1:1", discovery_config())
    assert withdraw is herd_discovery_mdns._nothing  # no background announcement started
    await withdraw()
    with pytest.raises(RuntimeError, match="not searching: a test run outside"):
        await discovery._search(discovery_config(), deadline=0.0)
    assert await discovery.find_router(discovery_config(), timeout=0.05) is None


# --- the /fleet/hello check, against real routers on loopback (no mDNS) ---------------------------


async def test_hello_tells_a_herd_router_and_its_proof(herd_router):
    router = await herd_router(plugins="backend-ollama", env={"FLEET_SECRET": SECRET})
    async with aiohttp_session() as http:
        body, proved = await _hello(http, router.url, SECRET, 2.0)
        assert body["service"] == "herd" and proved is True
        assert (await _hello(http, router.url, "another secret", 2.0))[1] is False
        assert (await _hello(http, router.url, "", 2.0))[1] is False


async def test_hello_rejects_what_is_not_a_herd_router(aiohttp_server):
    async def other(request):
        return web.json_response({"service": "something-else"})

    async def moved(request):
        raise web.HTTPFound("http://10.255.255.1/fleet/hello")

    app = web.Application()
    app.router.add_get("/fleet/hello", other)
    other_server = await aiohttp_server(app)
    app2 = web.Application()
    app2.router.add_get("/fleet/hello", moved)
    moved_server = await aiohttp_server(app2)
    async with aiohttp_session() as http:
        assert await _hello(http, str(other_server.make_url("")).rstrip("/"), "", 2.0) is None
        assert await _hello(http, str(moved_server.make_url("")).rstrip("/"), "", 2.0) is None
        assert await _hello(http, "http://127.0.0.1:9", "", 0.5) is None  # nothing listening


async def test_a_resolved_service_becomes_a_candidate(herd_router):
    router = await herd_router(plugins="backend-ollama", env={"FLEET_SECRET": SECRET})
    port = int(router.url.rsplit(":", 1)[1])
    info = AsyncServiceInfo(  # a plain record: no Zeroconf instance behind it
        "_herd._tcp.local.", "Herd router on test._herd._tcp.local.", port=port,
        properties=service_txt(secured=True), parsed_addresses=["127.0.0.1"],
    )
    async with aiohttp_session() as http:
        found = await _check_service(http, info.name, info, SECRET, 2.0)
    assert found is not None
    assert found.url == router.url and found.proved and found.claims_secured
    assert found.router_id == router.services.router_id


def aiohttp_session():
    import aiohttp

    return aiohttp.ClientSession()


class FixedAnswers:
    """A discovery plugin whose search (the zeroconf part) is replaced by fixed candidates."""

    def __init__(self, candidates):
        self.discovery = MdnsDiscovery(make_config(make_host("discovery-mdns")))

        async def search(config, deadline):
            return candidates

        self.discovery._search = search

    @hookimpl
    def herd_discovery(self, config):
        return [self.discovery]


async def test_the_agent_moves_past_a_router_that_fails_the_challenge(
    herd_router, aiohttp_server, tmp_path
):
    """Neither answer is marked proved (as if the challenge had been lost): the kernel refuses
    the impostor, which ranks first, and the next call offers the real router."""
    real = await herd_router(plugins="backend-ollama", env={"FLEET_SECRET": SECRET})

    async def hello(request):
        return web.json_response({"service": "herd", "router_id": "000", "proof": "0" * 64})

    app = web.Application()
    app.router.add_get("/fleet/hello", hello)
    fake_url = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    plugin = FixedAnswers([candidate(fake_url, "000", secured=True),
                           candidate(real.url, real.services.router_id, secured=True)])
    host = make_host("backend-ollama", extra=[plugin])
    config = make_config(host, {"FLEET_NODE_DATA_DIR": str(tmp_path)},
                         FLEET_NODE_ROUTER_URL="", FLEET_NODE_NODE_ID="n1",
                         FLEET_NODE_OLLAMA_HOST="http://127.0.0.1:9",
                         FLEET_NODE_HEARTBEAT_INTERVAL=0.2, FLEET_NODE_SECRET=SECRET)
    agent = NodeAgent(config, host)
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(lambda: "n1" in real.services.fleet.nodes, timeout=10)
        assert agent.router_url == real.url
        assert plugin.discovery.handed_out == {fake_url: 1, real.url: 1}
    finally:
        agent.stop()
        await asyncio.gather(task, return_exceptions=True)


# --- real mDNS, each scenario in its own network namespace ---------------------------------------


def _namespace_problem() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if not (shutil.which("unshare") and shutil.which("ip")):
        return "needs unshare (util-linux) and ip (iproute2)"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"],
                           capture_output=True, text=True, timeout=10, check=False)
    if probe.returncode:
        return f"`unshare -n` is not permitted here (needs root): {probe.stderr.strip()}"
    return None


NAMESPACE_PROBLEM = _namespace_problem()
netns = pytest.mark.skipif(
    NAMESPACE_PROBLEM is not None, reason=f"mDNS scenarios skipped: {NAMESPACE_PROBLEM}"
)


def run_scenario(name: str, tmp_path: Path) -> dict:
    command = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"',
               sys.executable, str(SCENARIO), name, str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"scenario {name} failed:\n{done.stdout}\n{done.stderr}"
    lines = done.stdout.strip().splitlines()
    assert lines, f"scenario {name} printed nothing:\n{done.stderr}"
    result = json.loads(lines[-1])
    result["log"] = done.stderr
    return result


@netns
def test_router_and_two_nodes_find_each_other(tmp_path):
    result = run_scenario("discover", tmp_path)
    assert result["registered"] == ["node-a", "node-b"], result["log"]
    assert result["agents_router_url"] == [result["router"]] * 2
    port = int(result["router"].rsplit(":", 1)[1])
    assert result["announced"] == [{
        "name": result["announced"][0]["name"],
        "addresses": ["127.0.0.1"],
        "port": port,
        "txt": {"path": "/", "version": herd_kernel.__version__, "secured": "0", "api": "1"},
    }]
    assert result["announced"][0]["name"].startswith("Herd router on ")
    assert result["withdrawn_seen"], "the router's goodbye did not reach the browser"


@netns
def test_with_a_secret_only_a_node_that_has_it_joins(tmp_path):
    result = run_scenario("secret", tmp_path)
    assert result["registered"] == ["member"], result["log"]
    assert result["member_router_url"] == result["router"]
    # the outsider found the router too, and every heartbeat it sent was refused
    assert result["outsider_router_url"] == result["router"]
    assert result["outsider_refused"] and result["outsider_heartbeats_accepted"] == 0
    assert SECRET not in result["log"]


@netns
def test_an_impostor_announcing_the_same_service_is_passed_over(tmp_path):
    result = run_scenario("impostor", tmp_path)
    assert result["registered"] == ["member"], result["log"]
    assert result["member_router_url"] == result["router"]
    assert "heartbeat" not in result["impostor_hits"]
    by_url = {c["url"]: c for c in result["candidates"]}
    assert by_url[result["router"]]["proved"] and not by_url[result["impostor"]]["proved"]
    # both took the default instance name: the second to probe was renamed, not silenced
    first, second = sorted((c["service"].split("._herd")[0] for c in result["candidates"]), key=len)
    assert second == first + "-2"


def test_a_loopback_router_announces_on_loopback_only(monkeypatch):
    """A router bound to 127.0.0.1 (``herd --demo``, benchmarks) must not put one packet on the
    network: its zeroconf is given the loopback interface alone."""
    seen = []
    monkeypatch.setattr(herd_discovery_mdns, "AsyncZeroconf",
                        lambda **kwargs: seen.append(kwargs["interfaces"]))
    discovery = MdnsDiscovery(make_config(make_host("discovery-mdns")))
    discovery._zeroconf(["127.0.0.1"])
    discovery._zeroconf(["10.231.0.1"])
    discovery._zeroconf()
    assert seen == [["127.0.0.1"], zeroconf.InterfaceChoice.All, zeroconf.InterfaceChoice.All]
