"""No prompt reaches the logs unless FLEET_LOG_BODIES is set, and request log lines carry the
request id: a real router process writing its real JSON log file under its data dir, a real node
agent, a simulated Ollama, requests that succeed, fail, are retried and are refused."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys

import aiohttp
import pytest
from herd_sim import PROFILES, Fault, SimNode

from herd_kernel.testing import wait_for

PROMPT = "my-bank-pin-is-73519-please-keep-it"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def spawn(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", *args, env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 20)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def traffic(url: str, node: SimNode) -> None:
    """Requests that carry the prompt every way a client can send one."""
    model = node.profile.loaded[0]
    chat = {"model": model, "messages": [{"role": "user", "content": PROMPT}],
            "options": {"num_predict": 3}}
    async with aiohttp.ClientSession() as http:
        for body in ({**chat, "stream": False}, {**chat, "stream": True}):
            async with http.post(f"{url}/api/chat", json=body) as r:
                assert r.status == 200
                await r.read()
        async with http.post(f"{url}/api/generate", json={
                "model": model, "prompt": PROMPT, "stream": False,
                "options": {"num_predict": 3}}) as r:
            assert r.status == 200
        async with http.post(f"{url}/v1/chat/completions", json={
                "model": model, "messages": chat["messages"], "max_tokens": 3}) as r:
            assert r.status == 200
        # refused: an unknown model, a body of the wrong shape, broken JSON
        async with http.post(f"{url}/api/chat", json={**chat, "model": "nowhere:1b"}) as r:
            assert r.status == 404
        async with http.post(f"{url}/api/chat", json={"model": model, "messages": PROMPT}) as r:
            assert r.status == 400
        async with http.post(f"{url}/api/generate",
                             data=f'{{"model": "{model}", "prompt": "{PROMPT}"'.encode()) as r:
            assert r.status == 400
        # the node fails before its first byte (a retry finds no other node), then mid-stream
        node.set_fault(Fault(kind="http500", count=1))
        async with http.post(f"{url}/api/chat", json={**chat, "stream": False}) as r:
            assert r.status >= 500
        node.set_fault(Fault(kind="drop_mid_stream", count=1, after_chunks=1))
        async with http.post(f"{url}/api/chat", json={**chat, "stream": True}) as r:
            await r.read()
        node.clear_faults()


async def run_router(tmp_path, log_bodies: bool) -> list[dict]:
    node = SimNode(PROFILES["small"], time_scale=0.01)
    await node.start()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"FLEET_DATA_DIR": str(tmp_path), "FLEET_LOG_LEVEL": "DEBUG", "FLEET_MDNS": "false",
           "FLEET_LOG_BODIES": "true" if log_bodies else "false"}
    router = await spawn("herd_kernel.cli", "--host", "127.0.0.1", "--port", str(port),
                         "--no-local-node", env=env)
    agent = None
    try:
        async def up() -> bool:
            try:
                async with aiohttp.ClientSession() as http:
                    async with http.get(f"{url}/api/tags") as r:
                        return bool((await r.json())["models"])
            except aiohttp.ClientError:
                return False

        agent = await spawn("herd_node", "--router-url", url, "--ollama-host", node.url,
                            "--node-id", "box", env={**env, "FLEET_NODE_HEARTBEAT_INTERVAL": "0.3",
                                                     "FLEET_NODE_DATA_DIR": str(tmp_path / "n")})
        await wait_for(up, timeout=30, interval=0.2)
        await traffic(url, node)
    finally:
        for proc in (agent, router):
            if proc is not None:
                await stop(proc)
        await node.stop()
    text = (tmp_path / "logs" / "herd.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize("log_bodies", [False, True], ids=["default", "FLEET_LOG_BODIES"])
async def test_prompts_stay_out_of_the_log_and_request_lines_carry_the_id(tmp_path, log_bodies):
    lines = await run_router(tmp_path, log_bodies)
    requests = [line for line in lines if line.get("event") == "request"]
    assert len(requests) >= 8
    assert all(line.get("request_id") for line in requests)
    # every line the request path logs names its request
    about_requests = [line for line in lines if line.get("logger") == "herd.request"]
    assert all(line.get("request_id") for line in about_requests), [
        line for line in about_requests if not line.get("request_id")]
    [retry] = [line for line in about_requests if line["event"] == "retrying on another node"]
    assert retry["request_id"] in {line["request_id"] for line in requests}
    with_prompt = [line for line in lines if PROMPT in json.dumps(line)]
    if not log_bodies:
        assert with_prompt == []
        return
    bodies = [line for line in lines if line.get("event") == "request body"]
    assert len(bodies) >= 6 and with_prompt == bodies
    ids = {line["request_id"] for line in requests}
    assert all(line["request_id"] in ids for line in bodies)
