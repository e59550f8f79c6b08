"""Shared fixtures for the herd-sim tests: simulated nodes on 127.0.0.1, fast time, and
small helpers to read raw HTTP responses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import attrs
import pytest
from herd_sim import PROFILES, NodeProfile, SimNode

FAST = 0.01


def profile(base: str = "medium", **changes: Any) -> NodeProfile:
    return attrs.evolve(PROFILES[base], **changes)


@pytest.fixture
async def make_node() -> AsyncIterator[Callable[..., Awaitable[SimNode]]]:
    """``await make_node(profile_or_name, time_scale=FAST, **profile_changes)``: a started node,
    stopped at the end of the test."""
    nodes: list[SimNode] = []

    async def factory(base: str | NodeProfile = "medium", *, time_scale: float = FAST,
                      **changes: Any) -> SimNode:
        prof = base if isinstance(base, NodeProfile) else PROFILES[base]
        if changes:
            prof = attrs.evolve(prof, **changes)
        node = SimNode(prof, time_scale=time_scale)
        await node.start()
        nodes.append(node)
        return node

    yield factory
    for node in nodes:
        await node.stop()


@pytest.fixture
async def node(make_node) -> SimNode:
    return await make_node("medium")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def ndjson(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    """Every line of an NDJSON body, asserting the framing (no blank lines, final newline)."""
    body = (await response.read()).decode()
    assert body.endswith("\n")
    lines = body.split("\n")[:-1]
    assert all(line.strip() for line in lines), "blank line in NDJSON"
    return [json.loads(line) for line in lines]


async def sse(response: aiohttp.ClientResponse) -> list[str]:
    """The ``data:`` payloads of an SSE body, asserting each event is ``data: ...\\n\\n``."""
    body = (await response.read()).decode()
    events = body.split("\n\n")
    assert events[-1] == ""
    payloads = []
    for event in events[:-1]:
        assert event.startswith("data: "), event
        payloads.append(event[len("data: "):])
    return payloads


async def eventually(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    """Poll ``predicate`` (sync or async) until true; fails after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.fixture
def util() -> Any:
    """The helpers above, as a fixture (test modules cannot import conftest by name under
    ``--import-mode=importlib``)."""
    from types import SimpleNamespace

    return SimpleNamespace(ndjson=ndjson, sse=sse, eventually=eventually, profile=profile,
                           FAST=FAST)


@pytest.fixture
async def clients() -> AsyncIterator[Any]:
    """``clients.ollama(node)`` / ``clients.openai(node)``: the official clients pointed at a
    node, closed after the test (an unclosed client leaks sockets, which fails the run)."""
    from types import SimpleNamespace

    import ollama
    import openai

    made: list[Any] = []

    def ollama_client(node: SimNode) -> ollama.AsyncClient:
        made.append(ollama.AsyncClient(host=node.url))
        return made[-1]

    def openai_client(node: SimNode) -> openai.AsyncOpenAI:
        made.append(openai.AsyncOpenAI(base_url=node.url + "/v1", api_key="x", max_retries=0))
        return made[-1]

    yield SimpleNamespace(ollama=ollama_client, openai=openai_client)
    for client in made:
        await client.close()
