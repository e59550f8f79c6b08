"""Every fault kind, as a client sees it, and the HTTP control routes that set them."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import httpx
import ollama
import openai
import pytest
from herd_sim import Fault

MODEL = "llama3.2:3b"
HI = [{"role": "user", "content": "hello"}]
CHAT = {"model": MODEL, "messages": HI}


async def test_refuse_closes_the_port_until_cleared(clients, node, http):
    port = node.port
    node.set_fault(Fault("refuse"))
    with pytest.raises(ConnectionError):  # what ollama-python raises when it cannot connect
        await clients.ollama(node).chat(MODEL, messages=HI)
    with pytest.raises(aiohttp.ClientConnectorError):
        await http.get(node.url + "/api/version")
    with pytest.raises(openai.APIConnectionError):
        await clients.openai(node).models.list()
    assert "/api/chat" not in node.stats["requests"]  # nothing ever reached the node
    node.clear_faults()
    assert node.port == port  # listening again on the same port
    reply = await clients.ollama(node).chat(MODEL, messages=HI)
    assert reply.done


async def test_refuse_keeps_open_connections_alive(node, util):
    async with aiohttp.ClientSession() as session:
        async with session.get(node.url + "/api/version") as r:
            assert r.status == 200
        # the control request travels on a connection opened before the port closes
        node.set_fault(Fault("refuse"))
        async with session.get(node.url + "/_sim/state") as r:
            state = await r.json()
        assert state["faults"][0]["kind"] == "refuse"
    node.clear_faults()


async def test_refuse_over_http_ends_after_its_duration(node, http, util):
    async with http.post(node.url + "/_sim/fault",
                         json={"kind": "refuse", "duration_s": 0.3}) as r:
        assert r.status == 200
    async with aiohttp.ClientSession() as fresh:
        with pytest.raises(aiohttp.ClientConnectorError):
            await fresh.get(node.url + "/api/version")

    async def back() -> bool:
        try:
            async with (
                aiohttp.ClientSession() as probe,
                probe.get(node.url + "/api/version") as r,
            ):
                return r.status == 200
        except aiohttp.ClientConnectorError:
            return False

    await util.eventually(back)
    assert node.faults == ()


async def test_counted_refuse_resets_the_next_connections(node):
    node.set_fault(Fault("refuse", count=2))
    # POST: aiohttp retries an idempotent GET once after a reset, which would use up two
    for _ in range(2):
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientOSError):
                async with session.post(node.url + "/api/show", json={"model": MODEL}) as r:
                    await r.read()
    async with (
        aiohttp.ClientSession() as session,
        session.post(node.url + "/api/show", json={"model": MODEL}) as r,
    ):
        assert r.status == 200
    assert node.stats["faults_triggered"] == {"refuse": 2} and node.faults == ()


async def test_drop_before_first_byte(clients, node, http):
    node.set_fault(Fault("drop_before_first_byte", count=1))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with http.post(node.url + "/api/chat", json=CHAT) as r:
            await r.read()
    node.set_fault(Fault("drop_before_first_byte", count=1))
    with pytest.raises(httpx.RemoteProtocolError):  # no status line ever came
        await clients.ollama(node).chat(MODEL, messages=HI)
    assert node.stats["requests"]["/api/chat"] == 2  # it did reach the node
    reply = await clients.ollama(node).chat(MODEL, messages=HI)  # count used up
    assert reply.done


@pytest.mark.parametrize("after", [0, 2, 5])
async def test_drop_mid_stream_after_n_chunks(node, after):
    node.set_fault(Fault("drop_mid_stream", after_chunks=after))
    lines: list[bytes] = []
    async with (
        aiohttp.ClientSession() as session,
        session.post(node.url + "/api/chat", json=CHAT) as r,
    ):
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            async for line in r.content:
                lines.append(line)
    assert len(lines) == after
    assert all(json.loads(line)["done"] is False for line in lines)


async def test_drop_mid_stream_with_both_clients(clients, node):
    node.set_fault(Fault("drop_mid_stream", after_chunks=2, count=2))
    received = []
    with pytest.raises(httpx.RemoteProtocolError):
        async for part in await clients.ollama(node).chat(MODEL, messages=HI, stream=True):
            received.append(part)
    assert len(received) == 2
    with pytest.raises(openai.APIError):
        stream = await clients.openai(node).chat.completions.create(
            model=MODEL, messages=HI, stream=True)
        async for _chunk in stream:
            pass
    # a non-streamed body is cut in half
    node.set_fault(Fault("drop_mid_stream", after_chunks=1, count=1))
    async with (
        aiohttp.ClientSession() as session,
        session.post(node.url + "/api/chat", json={**CHAT, "stream": False}) as r,
    ):
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    assert node.faults == ()


async def test_stall_holds_the_stream_until_cleared(node):
    node.set_fault(Fault("stall", after_chunks=2))
    async with (
        aiohttp.ClientSession() as session,
        session.post(node.url + "/api/chat", json=CHAT) as r,
    ):
        first = [await r.content.readline() for _ in range(2)]
        assert all(json.loads(line)["done"] is False for line in first)
        # nothing more arrives while stalled
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.content.readline(), 0.3)
        assert node.stats["in_flight"] == 1
        node.clear_faults()
        rest = [json.loads(line) async for line in r.content]
    assert rest[-1]["done"] is True
    assert len(first) + len(rest) == rest[-1]["eval_count"] + 1


async def test_a_stall_ends_after_stall_s(node):
    node.set_fault(Fault("stall", after_chunks=1, stall_s=0.05))
    async with (
        aiohttp.ClientSession() as session,
        session.post(node.url + "/api/chat", json={**CHAT, "stream": False}) as r,
    ):
        body = await r.json()
    assert body["done"] is True and body["message"]["content"]


async def test_http500_in_both_formats(clients, node, http):
    node.set_fault(Fault("http500"))
    with pytest.raises(ollama.ResponseError) as info:
        await clients.ollama(node).chat(MODEL, messages=HI)
    assert info.value.status_code == 500
    assert info.value.error == "llama runner process has terminated: exit status 2"
    with pytest.raises(openai.InternalServerError) as oai:
        await clients.openai(node).chat.completions.create(model=MODEL, messages=HI)
    assert oai.value.body["type"] == "api_error"
    async with http.get(node.url + "/api/tags") as r:  # not an inference path
        assert r.status == 200
    assert node.stats["faults_triggered"]["http500"] == 2


async def test_paths_select_where_a_fault_strikes(clients, node, http):
    node.set_fault(Fault("http500", paths=("/api/generate", "/api/t*")))
    async with http.get(node.url + "/api/tags") as r:
        assert r.status == 500
    with pytest.raises(ollama.ResponseError):
        await clients.ollama(node).generate(MODEL, "hi")
    assert (await clients.ollama(node).chat(MODEL, messages=HI)).done


async def test_control_routes(node, http):
    async with http.post(node.url + "/_sim/fault", json={"kind": "explode"}) as r:
        assert r.status == 400 and "unknown fault kind" in (await r.json())["error"]
    async with http.post(node.url + "/_sim/fault", json={"kind": "stall", "count": "x"}) as r:
        assert r.status == 400
    async with http.post(node.url + "/_sim/fault",
                         json={"kind": "http500", "count": 1, "paths": ["/api/chat"]}) as r:
        assert (await r.json())["faults"][0]["paths"] == ["/api/chat"]
    assert node.faults == (Fault("http500", count=1, paths=("/api/chat",)),)
    async with http.get(node.url + "/_sim/state") as r:
        state = await r.json()
    assert state["name"] == "medium" and state["faults"][0]["kind"] == "http500"
    assert [m["name"] for m in state["loaded"]] == ["llama3.2:3b"]
    assert state["profile"]["memory_gb"] == 32 and "stats" in state
    async with http.delete(node.url + "/_sim/fault") as r:
        assert await r.json() == {"faults": []}
    assert node.faults == ()
    async with http.get(node.url + "/_sim/hardware") as r:
        hardware = await r.json()
    assert set(hardware) == {"memory_total_gb", "memory_used_gb", "memory_available_gb",
                             "cores", "chip", "tokens_per_s", "profile"}
    assert hardware["memory_total_gb"] == 32 and hardware["chip"] == "Apple M2 Pro"
    assert hardware["memory_used_gb"] + hardware["memory_available_gb"] == pytest.approx(32)
    assert "/_sim/state" not in node.stats["requests"]  # the control plane is not counted


def test_fault_validation():
    with pytest.raises(ValueError):
        Fault("boom")
    with pytest.raises(ValueError):
        Fault("stall", count=0)
    assert Fault.from_dict({"kind": "stall", "paths": ["/x"]}).paths == ("/x",)
    with pytest.raises(ValueError):
        Fault.from_dict({"kind": "stall", "colour": "red"})
    assert Fault("http500").matches("/v1/chat/completions")
    assert not Fault("http500").matches("/api/tags")


async def test_clearing_also_cancels_faults_already_drawn(make_node, util):
    # a request that drew a stall while queued must not stall after clear_faults()
    node = await make_node("small", num_parallel=1)
    node.set_fault(Fault("stall", count=2))
    async with aiohttp.ClientSession() as session:
        first = asyncio.ensure_future(session.post(node.url + "/api/chat", json=CHAT))
        await util.eventually(lambda: node.stats["in_flight"] == 1)
        second = asyncio.ensure_future(session.post(node.url + "/api/chat",
                                                    json={**CHAT, "stream": False}))
        await util.eventually(lambda: node.stats["queued"] == 1)
        assert node.stats["faults_triggered"] == {"stall": 2}
        node.clear_faults()
        async with await first as r1:
            assert [json.loads(line)["done"] async for line in r1.content][-1] is True
        async with await second as r2:
            assert (await r2.json())["done"] is True
