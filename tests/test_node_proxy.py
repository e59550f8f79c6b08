"""The node agent's LAN proxy: only the router's routes, only signed traffic when a secret is set."""

import json

import aiohttp
import attrs
import ollama
import pytest
from herd_sim import PROFILES, SimNode

from herd_kernel import auth
from herd_kernel.testing import wait_for
from herd_node import proxy

SECRET = "s3cret"
MODEL = "llama3.2:3b"


@pytest.fixture
async def node():
    sim = SimNode(attrs.evolve(PROFILES["medium"], loaded=(MODEL,)), time_scale=0)
    await sim.start()
    yield sim
    await sim.stop()


async def start_proxy(node, secret):
    runner, port = await proxy.start(node.url, secret, "127.0.0.1", 0)
    return runner, f"http://127.0.0.1:{port}"


async def test_signed_requests_pass_and_everything_else_is_refused(node):
    runner, url = await start_proxy(node, SECRET)
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                       "options": {"num_predict": 3}}).encode()
    try:
        async with aiohttp.ClientSession() as http:
            headers = {auth.HEADER: auth.sign(SECRET, "POST", "/api/chat", body)}
            async with http.post(f"{url}/api/chat", data=body, headers=headers) as r:
                lines = (await r.read()).decode().strip().split("\n")
                assert r.status == 200 and json.loads(lines[-1])["done"] is True
            async with http.post(f"{url}/api/chat", data=body) as r:
                assert r.status == 401  # unsigned
            async with http.post(f"{url}/api/chat", data=body, headers=headers) as r:
                assert r.status == 401  # replayed
            delete = json.dumps({"model": MODEL}).encode()
            headers = {auth.HEADER: auth.sign(SECRET, "DELETE", "/api/delete", delete)}
            async with http.delete(f"{url}/api/delete", data=delete, headers=headers) as r:
                assert r.status == 404  # model management is not on the router's list
        assert node.stats["requests"].get("/api/chat") == 1
        assert not node.stats["requests"].get("/api/delete")
    finally:
        await runner.cleanup()


async def test_without_a_secret_the_proxy_still_only_forwards_router_routes(node):
    runner, url = await start_proxy(node, "")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/api/tags") as r:
                assert r.status == 200 and (await r.json())["models"]
            async with http.post(f"{url}/api/create", json={"model": "x"}) as r:
                assert r.status == 404
    finally:
        await runner.cleanup()


async def test_router_reaches_a_localhost_only_ollama_through_the_signed_proxy(
    node, herd_router, herd_agent
):
    router = await herd_router(plugins="backend-ollama", env={"FLEET_SECRET": SECRET})
    agent = await herd_agent(router.url, node.url, "laptop", plugins="backend-ollama", env={
        "FLEET_NODE_SECRET": SECRET, "FLEET_NODE_PROXY_PORT": "0",
        "FLEET_NODE_PROXY_HOST": "127.0.0.1"})
    assert agent.proxy_wanted()  # auto: a secret and a loopback Ollama
    await wait_for(lambda: router.services.fleet.nodes["laptop"].url == agent.advertised_ollama)
    assert agent.advertised_ollama != node.url
    async with ollama.AsyncClient(host=router.url) as client:
        reply = await client.chat(MODEL, messages=[{"role": "user", "content": "hi"}],
                                  options={"num_predict": 3})
        assert reply.message.content
        shown = await client.show(MODEL)
        assert shown.modelinfo
    assert node.stats["requests"]["/api/chat"] == 1


async def test_auto_mode_stays_off_without_a_secret(node, herd_router, herd_agent):
    router = await herd_router(plugins="backend-ollama")
    agent = await herd_agent(router.url, node.url, "laptop", plugins="backend-ollama")
    assert not agent.proxy_wanted() and agent.advertised_ollama is None
    assert router.services.fleet.nodes["laptop"].url == node.url
