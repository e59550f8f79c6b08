"""The commands users type, as separate processes: the README's demo command, and a router started
with ``--plugins`` plus a ``herd-node`` process in front of a simulated Ollama."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import ollama
import openai
import pytest
from herd_sim import PROFILES, SimNode

from herd_kernel.testing import wait_for

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def spawn(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def stop(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    except TimeoutError:
        proc.kill()
        _, err = await proc.communicate()
    return proc.returncode, err.decode(errors="replace")


async def fleet_status(url: str) -> dict | None:
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/fleet/status") as r:
                return await r.json()
    except aiohttp.ClientError:
        return None


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_opens_with_the_run_and_test_commands():
    run, test = readme_commands()[:2]
    assert run.endswith("uv run --all-packages herd --demo")
    assert test.endswith("uv run --all-packages pytest")
    assert "uv run --all-packages pytest" in (ROOT / ".ci" / "run").read_text()


async def test_readme_demo_command_starts_a_fleet_that_answers(tmp_path):
    # the README's command (`herd --demo`), on a free port so it cannot collide with a real Herd
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = await spawn("herd_kernel.cli", "--demo", "--port", str(port),
                       env={"FLEET_DATA_DIR": str(tmp_path)})
    try:
        async def three_nodes_online() -> bool:
            status = await fleet_status(url)
            return bool(status) and status["fleet"]["nodes_online"] >= 3 and all(
                n["ollama"] and n["ollama"]["models_available"] for n in status["nodes"])

        await wait_for(three_nodes_online, timeout=30, interval=0.2)
        async with ollama.AsyncClient(host=url) as client:
            loaded = (await client.ps()).models
            model = loaded[0].model if loaded else (await client.list()).models[0].model
            reply = await client.chat(model, messages=[{"role": "user", "content": "hello"}],
                                      options={"num_predict": 8})
        assert reply.message.content.strip()
        status = await fleet_status(url)
        assert status["fleet"]["nodes_total"] >= 3
        # each simulated machine's agent reports its OLLAMA_NUM_PARALLEL: the queue limit
        assert {n["node_id"]: n["ollama"]["num_parallel"] for n in status["nodes"]} == {
            n["node_id"]: PROFILES[n["node_id"].removeprefix("sim-")].num_parallel
            for n in status["nodes"]}
    finally:
        code, err = await stop(proc)
    assert code == 0, err
    assert "simulated node" in err
    lines = [json.loads(line) for line in (tmp_path / "logs" / "herd.jsonl").read_text().splitlines()]
    requests = [line for line in lines if line["event"] == "request"]
    assert requests and requests[-1]["status"] == "completed" and requests[-1]["node"]
    assert requests[-1]["level"] == "info" and requests[-1]["timestamp"].endswith("Z")


async def test_router_with_one_plugin_and_a_node_agent_process(tmp_path):
    node = SimNode(PROFILES["small"], time_scale=0.01)
    await node.start()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"FLEET_DATA_DIR": str(tmp_path)}
    router = await spawn("herd_kernel.cli", "--plugins", "backend-ollama", "--host", "127.0.0.1",
                         "--port", str(port), "--no-local-node", env=env)
    agent = None
    try:
        await wait_for(lambda: fleet_status(url), timeout=20, interval=0.1)
        agent = await spawn("herd_node", "--router-url", url, "--ollama-host", node.url,
                            "--node-id", "laptop", env={**env, "FLEET_NODE_HEARTBEAT_INTERVAL": "0.3"})

        async def registered() -> bool:
            status = await fleet_status(url)
            return bool(status and status["nodes"] and status["nodes"][0]["ollama"]
                        and status["nodes"][0]["ollama"]["models_available"])

        await wait_for(registered, timeout=20, interval=0.1)
        status = await fleet_status(url)
        [entry] = status["nodes"]
        assert entry["node_id"] == "laptop" and entry["status"] == "online"
        assert entry["memory"]["total_gb"] > 0 and entry["cpu"]["cores_logical"] > 0
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/api/tags") as r:
                tags = (await r.json())["models"]
            model = next(m["name"] for m in tags if "embedding" not in m.get("capabilities", []))
            body = {"model": model, "prompt": "hi", "stream": False, "options": {"num_predict": 4}}
            async with http.post(f"{url}/api/generate", json=body) as r:
                assert r.status == 200, await r.text()
                assert r.headers["X-Fleet-Node"] == "laptop"
                assert r.headers["X-Fleet-Score-Breakdown"] == ""  # no signal plugin loaded
                assert (await r.json())["response"]
        # SIGTERM on the agent: it drains and the router takes it offline at once
        code, err = await stop(agent)
        assert code == 0, err
        status = await fleet_status(url)
        assert status["nodes"][0]["status"] == "offline"
    finally:
        if agent is not None and agent.returncode is None:
            await stop(agent)
        code, err = await stop(router)
        await node.stop()
    assert code == 0, err


@pytest.mark.parametrize("argv", [["--plugins", "nothing-like-this"]])
async def test_unmatched_plugin_selection_is_reported(argv, tmp_path):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "herd_kernel.cli", "plugins", *argv,
        env={**os.environ, "FLEET_DATA_DIR": str(tmp_path)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0
    assert b"no installed plugin matches 'nothing-like-this'" in out


@pytest.mark.real_engine
async def test_openai_backend_alone_with_a_node_process_in_front_of_a_real_engine(
        tmp_path, llama_server):
    """`herd --plugins backend-openai` runs alone; `herd-node --openai-url` attaches the engine;
    the real openai client gets a real answer through it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"FLEET_DATA_DIR": str(tmp_path)}
    router = await spawn("herd_kernel.cli", "--plugins", "backend-openai", "--host", "127.0.0.1",
                         "--port", str(port), "--no-local-node", env=env)
    agent = None
    try:
        await wait_for(lambda: fleet_status(url), timeout=20, interval=0.1)
        agent = await spawn("herd_node", "--router-url", url, "--openai-url", llama_server,
                            "--node-id", "gpu-box", "--plugins", "backend-openai",
                            env={**env, "FLEET_NODE_HEARTBEAT_INTERVAL": "0.3"})

        async def listed() -> bool:
            status = await fleet_status(url)
            return bool(status and status["nodes"] and status["nodes"][0]["endpoints"]
                        and status["nodes"][0]["endpoints"][0]["models_available"])

        await wait_for(listed, timeout=20, interval=0.1)
        [entry] = (await fleet_status(url))["nodes"]
        [endpoint] = entry["endpoints"]
        assert (endpoint["kind"], endpoint["url"], endpoint["models_available"]) == (
            "openai", llama_server, ["smollm2"])
        question = [{"role": "user", "content": "What is the capital of France?"}]
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused") as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="smollm2", temperature=0, max_tokens=16, messages=question)
        # word for word what the engine answers when asked directly (greedy decoding)
        async with openai.AsyncOpenAI(base_url=f"{llama_server}/v1", api_key="unused") as client:
            alone = await client.chat.completions.create(
                model="smollm2", temperature=0, max_tokens=16, messages=question)
        answer = raw.parse().choices[0].message.content
        assert answer.strip() and answer == alone.choices[0].message.content
        assert raw.headers["X-Fleet-Node"] == "gpu-box"
    finally:
        if agent is not None:
            code, err = await stop(agent)
            assert code == 0, err
        code, err = await stop(router)
        assert code == 0, err


async def test_openai_url_without_the_openai_backend_is_a_clear_error(tmp_path):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "herd_node", "--router-url", "http://127.0.0.1:9",
        "--openai-url", "http://127.0.0.1:8080", "--plugins", "backend-ollama",
        env={**os.environ, "FLEET_DATA_DIR": str(tmp_path)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "unrecognized arguments: --openai-url" in err.decode()


async def test_the_routers_built_in_agent_attaches_an_engine_given_by_flag(tmp_path, llama_server):
    """`herd --openai-url URL` (the OpenAI backend's flag, read once the plugins are loaded):
    the router's own agent reports the engine on this machine, and it answers through Herd."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    router = await spawn("herd_kernel.cli", "--plugins", "backend-openai", "--host", "127.0.0.1",
                         "--port", str(port), "--openai-url", llama_server,
                         "--ollama-host", "http://127.0.0.1:9",
                         env={"FLEET_DATA_DIR": str(tmp_path), "FLEET_NODE_DATA_DIR": str(tmp_path)})
    try:
        async def listed() -> bool:
            status = await fleet_status(url)
            return bool(status and status["nodes"] and status["nodes"][0]["endpoints"]
                        and status["nodes"][0]["endpoints"][0]["models_available"])

        await wait_for(listed, timeout=30, interval=0.1)
        [entry] = (await fleet_status(url))["nodes"]
        assert [e["url"] for e in entry["endpoints"]] == [llama_server]
    finally:
        code, err = await stop(router)
        assert code == 0, err


test_the_routers_built_in_agent_attaches_an_engine_given_by_flag = pytest.mark.real_engine(
    test_the_routers_built_in_agent_attaches_an_engine_given_by_flag)


async def test_a_flag_no_loaded_plugin_declares_is_refused(tmp_path):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "herd_kernel.cli", "--plugins", "backend-ollama",
        "--openai-url", "http://127.0.0.1:8080", "plugins",
        env={**os.environ, "FLEET_DATA_DIR": str(tmp_path)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    # argparse's usage error (with subcommands it names the value it could not place)
    assert proc.returncode == 2 and err.decode().startswith("usage: herd") and not out
