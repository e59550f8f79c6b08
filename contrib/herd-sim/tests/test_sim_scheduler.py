"""Model memory, loading, eviction, keep_alive, num_ctx reloads and num_parallel queueing.

Requests are held in place with a ``stall`` fault (the stalled response keeps its model slot),
so queue states are observed directly instead of guessed from timings.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import aiohttp
import ollama
import pytest
from herd_sim import CATALOGUE, Fault, NodeProfile

HI = [{"role": "user", "content": "hello there"}]
SMALL, MID, BIG = "llama3.2:1b", "llama3.2:3b", "qwen2.5:7b"


def box(memory_gb: float, **changes) -> NodeProfile:
    base = {"name": "box", "memory_gb": memory_gb, "reserved_gb": 0, "tokens_per_s": 400.0,
            "load_gbps": 20.0, "models": (SMALL, MID, BIG, "llama3.3:70b")}
    return NodeProfile(**{**base, **changes})


def loaded(node) -> list[str]:
    return [name for name, _ctx, _exp in node.loaded_models()]


async def chat(client, model, **kwargs):
    return await client.chat(model, messages=HI, options={"num_predict": 3,
                                                          **kwargs.pop("options", {})}, **kwargs)


async def test_loading_uses_memory_and_evicts_the_least_recently_used(clients, make_node, http):
    node = await make_node(box(7))  # 7 GiB: 1b + 3b fit, adding the 7b needs room
    client = clients.ollama(node)
    assert loaded(node) == [] and node.memory_used_bytes == 0
    first = await chat(client, SMALL)
    assert first.load_duration > 0 and loaded(node) == [SMALL]
    assert node.memory_used_bytes == CATALOGUE[SMALL].size_bytes
    await chat(client, MID)
    async with http.get(node.url + "/_sim/hardware") as r:
        hardware = await r.json()
    used = CATALOGUE[SMALL].size_bytes + CATALOGUE[MID].size_bytes
    assert hardware["memory_used_gb"] == pytest.approx(used / 1024**3, abs=1e-3)
    assert hardware["memory_total_gb"] == 7
    await chat(client, MID)  # 3b is now the most recently used
    await chat(client, BIG)
    assert sorted(loaded(node)) == sorted([MID, BIG])
    assert node.stats["evictions"] == 1 and node.stats["loads"] == 3
    assert node.memory_used_bytes == CATALOGUE[MID].size_bytes + CATALOGUE[BIG].size_bytes


async def test_a_model_larger_than_memory_is_a_500(clients, make_node):
    node = await make_node(box(16, reserved_gb=None))
    with pytest.raises(ollama.ResponseError) as info:
        await chat(clients.ollama(node), "llama3.3:70b")
    assert info.value.status_code == 500
    assert info.value.error == ("model requires more system memory (39.6 GiB) than is "
                                "available (13.6 GiB)")
    assert loaded(node) == []


async def test_a_load_waits_for_busy_models_then_evicts_them(clients, make_node, util):
    node = await make_node(box(6))  # 3b + 7b do not fit together
    client = clients.ollama(node)
    await chat(client, MID)
    node.set_fault(Fault("stall", count=1))
    holder = asyncio.ensure_future(_consume(await client.chat(MID, messages=HI, stream=True)))
    await util.eventually(lambda: node.stats["in_flight"] == 1)
    waiting = asyncio.ensure_future(chat(client, BIG))
    await util.eventually(lambda: node.stats["queued"] == 1)
    assert loaded(node) == [MID]  # nothing evicted while the 3b works
    node.clear_faults()
    assert (await waiting).done and (await holder)[-1].done
    assert loaded(node) == [BIG] and node.stats["evictions"] == 1


async def test_max_loaded_models(clients, make_node):
    node = await make_node(box(64, max_loaded_models=1))
    client = clients.ollama(node)
    await chat(client, SMALL)
    await chat(client, MID)
    assert loaded(node) == [MID] and node.stats["evictions"] == 1


async def test_keep_alive_zero_unloads_after_the_response(clients, make_node):
    node = await make_node("small")
    client = clients.ollama(node)
    await chat(client, MID, keep_alive="10m")
    assert MID in loaded(node)
    await chat(client, MID, keep_alive=0)
    assert MID not in loaded(node)
    assert node.stats["unloads"] == 1


async def test_keep_alive_expiry_unloads(clients, make_node, util):
    node = await make_node("small")
    await chat(clients.ollama(node), MID, keep_alive="1s")
    [(_name, _ctx, expires)] = [m for m in node.loaded_models() if m[0] == MID]
    assert expires > datetime.now().astimezone()
    await util.eventually(lambda: MID not in loaded(node))
    assert node.stats["unloads"] == 1


async def test_keep_alive_forms(clients, make_node, http):
    node = await make_node("small")
    client = clients.ollama(node)
    await chat(client, MID, keep_alive=-1)
    forever = {m.model: m.expires_at for m in (await client.ps()).models}[MID]
    assert forever.year > 2300
    await chat(client, MID, keep_alive=3600)
    hour = {m.model: m.expires_at for m in (await client.ps()).models}[MID]
    now = datetime.now().astimezone()
    assert now + timedelta(minutes=50) < hour < now + timedelta(minutes=70)
    # /api/ps lists the latest expiry first
    await chat(client, SMALL, keep_alive="2h")
    assert [m.model for m in (await client.ps()).models][:2] == [SMALL, MID]


async def test_a_different_num_ctx_reloads_the_model(clients, make_node):
    node = await make_node("small")
    client = clients.ollama(node)
    loads = node.stats["loads"]
    await chat(client, MID)
    assert {m.model: m.context_length for m in (await client.ps()).models}[MID] == 4096
    await chat(client, MID, options={"num_ctx": 8192})
    assert {m.model: m.context_length for m in (await client.ps()).models}[MID] == 8192
    await chat(client, MID, options={"num_ctx": 8192})
    await chat(client, "llama3.2:1b", options={"num_ctx": 10**7})  # capped at the model's 131072
    ctx = {m.model: m.context_length for m in (await client.ps()).models}
    assert ctx["llama3.2:1b"] == 131072
    assert node.stats["loads"] == loads + 3  # 3b at 4096, 3b at 8192, 1b at 131072


async def _consume(stream):
    return [part async for part in stream]


async def test_num_parallel_one_runs_requests_one_at_a_time_in_order(clients, make_node, util):
    node = await make_node(box(16, num_parallel=1))
    client = clients.ollama(node)
    await chat(client, MID)  # loaded, so the order below is the queue's, not the loader's
    node.set_fault(Fault("stall", count=1))
    finished: list[int] = []

    async def request(i: int) -> None:
        await _consume(await client.chat(MID, messages=[{"role": "user", "content": f"#{i}"}],
                                         stream=True))
        finished.append(i)

    tasks = [asyncio.ensure_future(request(0))]
    await util.eventually(lambda: node.stats["in_flight"] == 1)
    for i in range(1, 5):
        tasks.append(asyncio.ensure_future(request(i)))
        await util.eventually(lambda i=i: node.stats["queued"] == i)
    assert node.stats["in_flight"] == 1
    node.clear_faults()
    await asyncio.gather(*tasks)
    assert finished == [0, 1, 2, 3, 4]
    assert node.stats["max_in_flight"][MID] == 1
    assert node.stats["in_flight"] == 0 and node.stats["queued"] == 0


async def test_num_parallel_one_with_five_concurrent_requests(clients, make_node):
    node = await make_node(box(16, num_parallel=1))
    client = clients.ollama(node)
    replies = await asyncio.gather(*(chat(client, MID) for _ in range(5)))
    assert all(r.done for r in replies)
    assert node.stats["max_in_flight"] == {MID: 1}
    assert node.stats["requests"]["/api/chat"] == 5


async def test_num_parallel_three_holds_three_slots(clients, make_node, util):
    node = await make_node(box(16, num_parallel=3))
    client = clients.ollama(node)
    await chat(client, MID)
    node.set_fault(Fault("stall", count=3))
    tasks = []
    # one at a time, so the three stalled requests are surely the three holding a slot
    for i in range(5):
        tasks.append(asyncio.ensure_future(
            _consume(await client.chat(MID, messages=HI, stream=True))))
        await util.eventually(lambda i=i: (node.stats["in_flight"], node.stats["queued"])
                              == (min(i + 1, 3), max(0, i - 2)))
    node.clear_faults()
    await asyncio.gather(*tasks)
    assert node.stats["max_in_flight"][MID] == 3


async def test_a_full_queue_is_a_503(clients, make_node, util):
    node = await make_node(box(16, num_parallel=1, max_queue=2))
    client = clients.ollama(node)
    await chat(client, MID)
    node.set_fault(Fault("stall", count=1))
    tasks = [asyncio.ensure_future(_consume(await client.chat(MID, messages=HI, stream=True)))]
    await util.eventually(lambda: node.stats["in_flight"] == 1)
    tasks += [asyncio.ensure_future(chat(client, MID)) for _ in range(2)]
    await util.eventually(lambda: node.stats["queued"] == 2)
    with pytest.raises(ollama.ResponseError) as info:
        await chat(client, MID)
    assert info.value.status_code == 503
    assert info.value.error == ("server busy, please try again.  maximum pending requests "
                                "exceeded")
    node.clear_faults()
    await asyncio.gather(*tasks)


async def test_a_client_leaving_the_queue_is_removed(clients, make_node, util, http):
    node = await make_node(box(16, num_parallel=1))
    client = clients.ollama(node)
    await chat(client, MID)
    node.set_fault(Fault("stall", count=1))
    holder = asyncio.ensure_future(_consume(await client.chat(MID, messages=HI, stream=True)))
    await util.eventually(lambda: node.stats["in_flight"] == 1)

    async def queued_request() -> None:
        body = {"model": MID, "messages": HI, "stream": False}
        async with (
            aiohttp.ClientSession() as session,
            session.post(node.url + "/api/chat", json=body) as r,
        ):
            await r.read()

    leaver = asyncio.ensure_future(queued_request())
    await util.eventually(lambda: node.stats["queued"] == 1)
    leaver.cancel()  # the client goes away: its connection closes
    await util.eventually(lambda: node.stats["queued"] == 0)
    node.clear_faults()
    await holder
    assert node.stats["max_in_flight"][MID] == 1
    with pytest.raises(asyncio.CancelledError):
        await leaver


async def test_slow_load_fault(clients, make_node):
    node = await make_node(box(16, load_gbps=2.0))
    node.set_fault(Fault("slow_load", count=1))
    reply = await chat(clients.ollama(node), BIG)
    nominal_s = CATALOGUE[BIG].size_bytes / 1e9 / 2.0
    assert reply.load_duration >= 10 * nominal_s * 1e9
    assert node.stats["faults_triggered"] == {"slow_load": 1} and node.faults == ()
