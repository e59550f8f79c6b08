"""/v1/responses (OpenAI Responses, Ollama 0.13.3) and /v1/messages (Anthropic Messages, Ollama
0.14.0) routed by model over real sockets to simulated nodes, streamed (SSE) and not, with their
own error shapes, and never to a node whose Ollama predates the route."""

from __future__ import annotations

import json

import aiohttp
import attrs
import pytest
from herd_sim import PROFILES, SimFleet

from herd_kernel.testing import wait_for

MODEL = "llama3.2:3b"
RESPONSES = {"model": MODEL, "input": "Why is the sky blue?", "max_output_tokens": 8}
MESSAGES = {"model": MODEL, "max_tokens": 8,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]}


@pytest.fixture
async def herd(herd_router, herd_agent):
    fleets: list[SimFleet] = []

    async def start(**versions: str):
        fleet = SimFleet([attrs.evolve(PROFILES["medium"], name=name, loaded=(MODEL,),
                                       models=(MODEL,), version=version)
                          for name, version in versions.items()], time_scale=0.02)
        await fleet.start()
        fleets.append(fleet)
        router = await herd_router()
        for name, node in fleet.nodes.items():
            await herd_agent(router.url, node.url, name, interval=0.1)
        await wait_for(lambda: len(router.services.fleet.nodes) == len(versions) and all(
            n.available for n in router.services.fleet.nodes.values()))
        return router, fleet

    yield start
    for fleet in fleets:
        await fleet.stop()


def events(raw: bytes) -> list[tuple[str, dict]]:
    out = []
    for block in raw.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in lines:
            out.append((lines.get("event", ""), json.loads(lines["data"])))
    return out


async def test_responses_whole_and_streamed(herd):
    router, _ = await herd(new="0.14.2")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/v1/responses", json=RESPONSES) as r:
            whole = await r.json()
            assert r.status == 200 and r.headers["X-Fleet-Node"] == "new"
        async with http.post(f"{router.url}/v1/responses", json={**RESPONSES, "stream": True}) as r:
            assert r.status == 200 and r.content_type == "text/event-stream"
            streamed = events(await r.read())
    assert whole["object"] == "response" and whole["status"] == "completed"
    assert whole["output"][0]["content"][0]["type"] == "output_text"
    kinds = [kind for kind, _ in streamed]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    text = "".join(d["delta"] for k, d in streamed if k == "response.output_text.delta")
    assert text == streamed[-1][1]["response"]["output"][0]["content"][0]["text"]


async def test_messages_whole_and_streamed(herd):
    router, _ = await herd(new="0.14.2")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/v1/messages", json=MESSAGES) as r:
            whole = await r.json()
            assert r.status == 200
        async with http.post(f"{router.url}/v1/messages", json={**MESSAGES, "stream": True}) as r:
            assert r.status == 200
            streamed = events(await r.read())
    assert whole["type"] == "message" and whole["role"] == "assistant"
    assert whole["content"][0]["type"] == "text" and whole["usage"]["output_tokens"] > 0
    kinds = [kind for kind, _ in streamed]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(data["type"] == kind for kind, data in streamed)


async def test_unknown_model_in_each_apis_own_words(herd):
    router, _ = await herd(new="0.14.2")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/v1/messages", json={**MESSAGES, "model": "nope:1b"}) as r:
            anthropic = await r.json()
            assert r.status == 404
        async with http.post(f"{router.url}/v1/responses",
                             json={**RESPONSES, "model": "nope:1b"}) as r:
            openai = await r.json()
            assert r.status == 404
        async with http.post(f"{router.url}/v1/messages", data=b"{nope") as r:
            bad = await r.json()
            assert r.status == 400
    # Ollama's anthropic middleware: the native 404 message in Anthropic's error object
    assert anthropic["type"] == "error" and anthropic["request_id"].startswith("req_")
    assert anthropic["error"] == {"type": "not_found_error", "message": "model 'nope:1b' not found"}
    assert openai["error"]["type"] == "not_found_error"
    assert openai["error"]["message"] == "model 'nope:1b' not found"
    assert bad["type"] == "error" and bad["error"]["type"] == "invalid_request_error"


async def test_a_node_older_than_the_route_is_not_used(herd):
    router, fleet = await herd(old="0.12.3", new="0.14.2")
    async with aiohttp.ClientSession() as http:
        for _ in range(4):
            async with http.post(f"{router.url}/v1/messages", json=MESSAGES) as r:
                assert r.status == 200 and r.headers["X-Fleet-Node"] == "new"
    assert fleet.nodes["old"].stats["requests"].get("/v1/messages", 0) == 0


async def test_only_old_nodes_is_a_502_that_says_why(herd):
    router, fleet = await herd(old="0.13.3")  # has /v1/responses, not /v1/messages
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/v1/messages", json=MESSAGES) as r:
            body = await r.json()
            assert r.status == 502
        async with http.post(f"{router.url}/v1/responses", json=RESPONSES) as r:
            assert r.status == 200
    assert "0.13.3 has no /v1/messages (needs 0.14.0)" in body["error"]["message"]
    assert fleet.nodes["old"].stats["requests"].get("/v1/messages", 0) == 0
