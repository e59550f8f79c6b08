"""``SimFleet`` and the ``herd-sim`` command (agents are replaced by a harmless child process:
the real node agent belongs to another package)."""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import sys

import aiohttp
import attrs
import pytest
from herd_sim import PROFILES, SimFleet
from herd_sim.cli import agent_command, agent_env, build_parser, fleet_profiles, run


async def test_fleet_runs_nodes_on_their_own_ports():
    profiles = [PROFILES["large"], PROFILES["small"], attrs.evolve(PROFILES["small"], name="b")]
    async with SimFleet(profiles, time_scale=0) as fleet:
        assert list(fleet.nodes) == ["large", "small", "b"]
        assert len({n.port for n in fleet.nodes.values()}) == 3
        async with aiohttp.ClientSession() as http:
            for name, node in fleet.nodes.items():
                async with http.get(node.url + "/_sim/hardware") as r:
                    assert (await r.json())["profile"] == name
                async with http.get(node.url + "/api/ps") as r:
                    ps = [m["name"] for m in (await r.json())["models"]]
                assert sorted(ps) == sorted(node.profile.loaded)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectorError):
            await http.get(fleet.nodes["large"].url + "/")


def test_fleet_names_must_be_unique():
    with pytest.raises(ValueError, match="unique"):
        SimFleet([PROFILES["small"], PROFILES["small"]])


def test_profiles_for_the_command_line():
    names = [p.name for p in fleet_profiles(["large", "small"], 5)]
    assert names == ["sim-large", "sim-small", "sim-large-2", "sim-small-2", "sim-large-3"]
    assert [p.name for p in fleet_profiles(["tiny"])] == ["sim-tiny"]
    with pytest.raises(ValueError, match="unknown profile"):
        fleet_profiles(["huge"])


def test_agent_command_and_environment():
    command = agent_command("http://r:11435", "http://127.0.0.1:5000", "sim-large",
                            ["--heartbeat-interval=1"])
    assert command == [sys.executable, "-m", "herd_node", "--router-url", "http://r:11435",
                       "--ollama-host", "http://127.0.0.1:5000", "--node-id", "sim-large",
                       "--heartbeat-interval=1"]
    env = agent_env({"PATH": "/bin"})
    assert env == {"PATH": "/bin", "FLEET_NODE_SIM_HARDWARE": "1"}
    args = build_parser().parse_args(["--nodes", "2", "--router-url", "http://r",
                                      "--agent-arg=--x=1", "--agent-arg", "y"])
    assert args.nodes == 2 and args.agent_arg == ["--x=1", "y"] and args.time_scale == 1.0


async def test_run_starts_agents_and_terminates_them(tmp_path):
    args = argparse.Namespace(nodes=2, profiles="small,tiny", host="127.0.0.1", base_port=0,
                              time_scale=0.0, router_url="http://router:1", agent_arg=["--a=1"])
    spawned: list[tuple[list[str], dict[str, str], asyncio.subprocess.Process]] = []
    stop = asyncio.Event()

    async def fake_spawn(command, env):
        # a real child that would run for a minute: run() has to terminate it
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import time; time.sleep(60)")
        spawned.append((command, env, proc))
        if len(spawned) == 2:
            stop.set()
        return proc

    out = io.StringIO()
    assert await asyncio.wait_for(run(args, stop=stop, spawn=fake_spawn, out=out), 30) == 0
    lines = out.getvalue().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["sim-small", "sim-tiny"]
    assert "loaded=llama3.2:1b" in lines[0] and "loaded=-" in lines[1]
    assert [c[0][-3] for c in spawned] == ["--node-id"] * 2
    assert [c[0][-2] for c in spawned] == ["sim-small", "sim-tiny"]
    urls = [c[0][c[0].index("--ollama-host") + 1] for c in spawned]
    assert all(u.startswith("http://127.0.0.1:") for u in urls)
    assert all(c[1]["FLEET_NODE_SIM_HARDWARE"] == "1" and c[0][-1] == "--a=1" for c in spawned)
    # each agent reports its simulated machine's OLLAMA_NUM_PARALLEL, the router's queue limit
    assert [c[1]["FLEET_NODE_OLLAMA_NUM_PARALLEL"] for c in spawned] == [
        str(PROFILES["small"].num_parallel), str(PROFILES["tiny"].num_parallel)]
    assert all(proc.returncode == -signal.SIGTERM for _c, _e, proc in spawned)


async def test_the_command_runs_until_sigterm():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "herd_sim", "--profiles", "tiny", "--time-scale", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        name, url, profile, _loaded = line.rstrip("\n").split("\t")
        assert name == "sim-tiny" and profile == "profile=tiny"
        async with aiohttp.ClientSession() as http, http.get(url + "/api/version") as r:
            assert (await r.json())["version"] == "0.12.3"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()


async def test_a_node_restarts_on_its_port_with_its_disk():
    from herd_sim import SimNode

    node = SimNode(PROFILES["tiny"], time_scale=0)
    await node.start()
    port = node.port
    async with aiohttp.ClientSession() as http:
        async with http.post(node.url + "/api/pull", json={"model": "qwen2.5:7b",
                                                           "stream": False}) as r:
            assert (await r.json()) == {"status": "success"}
        async with http.post(node.url + "/api/generate",
                             json={"model": "llama3.2:1b", "prompt": "", "keep_alive": -1}) as r:
            assert (await r.json())["done_reason"] == "load"
        await node.stop()
        assert node.loaded_models() == []
        await node.start()
        try:
            assert node.port == port
            async with http.get(node.url + "/api/tags") as r:
                assert "qwen2.5:7b" in [m["name"] for m in (await r.json())["models"]]
            async with http.post(node.url + "/api/generate",
                                 json={"model": "qwen2.5:7b", "prompt": "hi",
                                       "stream": False}) as r:
                assert (await r.json())["done"] is True
        finally:
            await node.stop()
