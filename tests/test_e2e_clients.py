"""End to end over loopback sockets: the official ``ollama`` and ``openai`` clients talk to the
real router, which routes to two simulated Ollama nodes described by two real node agents."""

from __future__ import annotations

import json

import aiohttp
import attrs
import ollama
import openai
import pytest
from herd_analytics import store_of
from herd_sim import PROFILES, Fault, SimFleet

from herd_kernel.testing import wait_for

MODEL = "llama3.2:3b"


def profile(name: str, loaded: tuple[str, ...], models: tuple[str, ...]):
    return attrs.evolve(PROFILES["medium"], name=name, loaded=loaded, models=models,
                        tokens_per_s=2000.0, num_parallel=4)


@pytest.fixture
async def fleet():
    sim = SimFleet(
        [
            profile("alpha", (MODEL,), (MODEL, "qwen2.5:7b")),
            profile("beta", (), (MODEL, "qwen2.5:7b")),
        ],
        time_scale=0.01,
    )
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def closing():
    """Clients to close at the end of the test (unclosed sockets are errors here)."""
    clients = []
    yield clients.append
    for client in clients:
        await client.close()


def native(url, closing):
    client = ollama.AsyncClient(host=url)
    closing(client)
    return client


def oai(url, closing):
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    closing(client)
    return client


@pytest.fixture
async def herd(fleet, herd_router, herd_agent):
    router = await herd_router()
    for name, node in fleet.nodes.items():
        await herd_agent(router.url, node.url, name)
    await wait_for(lambda: len(router.services.fleet.nodes) == 2
                   and all(n.loaded or n.available for n in router.services.fleet.nodes.values()))
    return router


def served(fleet, name: str) -> int:
    stats = fleet.nodes[name].stats
    counts = stats.get("requests", stats)
    return sum(v for k, v in counts.items() if isinstance(v, int) and k in (
        "/api/chat", "/api/generate", "/v1/chat/completions"))


@pytest.mark.parametrize("stream", [False, True])
async def test_ollama_client_chats_on_the_hot_node(herd, fleet, stream, closing):
    client = native(herd.url, closing)
    messages = [{"role": "user", "content": "Why is the sky blue?"}]
    if stream:
        parts = [part async for part in await client.chat(MODEL, messages=messages, stream=True)]
        text = "".join(p.message.content or "" for p in parts)
        final = parts[-1]
    else:
        final = await client.chat(MODEL, messages=messages)
        text = final.message.content
    assert text.strip()
    assert final.done and final.done_reason in ("stop", "length") and final.eval_count > 0
    trace = herd.services.recent_traces[-1]
    assert trace.node_id == "alpha" and trace.status == "completed"
    assert trace.completion_tokens == final.eval_count
    assert trace.score_breakdown["thermal"] == 50
    if stream:
        assert 0 < trace.ttft_ms <= trace.latency_ms
    else:
        assert trace.ttft_ms is None  # a whole answer has no first token to time
    assert served(fleet, "alpha") == 1 and served(fleet, "beta") == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_client_chats_on_the_hot_node(herd, fleet, stream, closing):
    client = oai(herd.url, closing)
    messages = [{"role": "user", "content": "Say hello"}]
    if stream:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True})
        chunks = [c async for c in raw.parse()]
        assert len({c.id for c in chunks}) == 1  # one stable id across the stream
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].usage.completion_tokens > 0
    else:
        raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=messages)
        completion = raw.parse()
        text = completion.choices[0].message.content
        assert completion.usage.completion_tokens > 0
    assert text.strip()
    assert raw.headers["X-Fleet-Node"] == "alpha"
    assert raw.headers["X-Fleet-Retries"] == "0"
    assert "thermal=50" in raw.headers["X-Fleet-Score-Breakdown"]
    assert float(raw.headers["X-Fleet-Score"]) >= 50
    assert herd.services.recent_traces[-1].node_id == "alpha"


async def test_cold_model_goes_to_a_holder_and_listings_are_the_fleet_union(herd, fleet, closing):
    client = native(herd.url, closing)
    tags = await client.list()
    names = {m.model: m for m in tags.models}
    assert {MODEL, "qwen2.5:7b"} <= set(names)
    assert names[MODEL].size > 0
    raw_tags = await _get_json(f"{herd.url}/api/tags")
    entry = next(m for m in raw_tags["models"] if m["name"] == MODEL)
    assert sorted(entry["fleet_nodes"]) == ["alpha", "beta"]
    ps = await _get_json(f"{herd.url}/api/ps")
    assert [(m["name"], m["fleet_nodes"]) for m in ps["models"]] == [(MODEL, ["alpha"])]
    shown = await client.show(MODEL)
    assert shown.modelinfo  # model_info relayed from a node
    oa = oai(herd.url, closing)
    ids = {m.id async for m in oa.models.list()}
    assert {MODEL, "qwen2.5:7b"} <= ids
    version = await _get_json(f"{herd.url}/api/version")
    assert version["version"].count(".") == 2


async def test_unknown_model_is_404_for_both_clients(herd, closing):
    with pytest.raises(ollama.ResponseError) as info:
        await native(herd.url, closing).chat("nope:1b", messages=[])
    assert info.value.status_code == 404 and info.value.error == "model 'nope:1b' not found"
    client = oai(herd.url, closing)
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="nope:1b", messages=[{"role": "user", "content": "x"}])


@pytest.mark.parametrize("kind", ["refuse", "drop_before_first_byte", "http500"])
@pytest.mark.parametrize("path,stream", [("/api/chat", True), ("/api/chat", False),
                                         ("/v1/chat/completions", True), ("/v1/chat/completions", False)])
async def test_failure_before_first_byte_is_retried_on_the_next_node(herd, fleet, kind, path, stream):
    fleet.nodes["alpha"].set_fault(Fault(kind=kind))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    async with aiohttp.ClientSession() as http:
        async with http.post(herd.url + path, json=body) as response:
            payload = await response.read()
            assert response.status == 200, payload
            assert response.headers["X-Fleet-Node"] == "beta"
            assert response.headers["X-Fleet-Retries"] == "1"
    trace = herd.services.recent_traces[-1]
    assert trace.status == "completed" and trace.retries == 1
    assert [a.node_id for a in trace.attempts] == ["alpha", "beta"]
    assert payload.strip()


async def test_every_node_failing_is_a_502_json_in_each_format(herd, fleet):
    for node in fleet.nodes.values():
        node.set_fault(Fault(kind="http500"))
    async with aiohttp.ClientSession() as http:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        async with http.post(f"{herd.url}/api/chat", json=body) as r:
            assert r.status == 502
            assert "every node" in (await r.json())["error"]
            retries = int(r.headers["X-Fleet-Retries"])
        async with http.post(f"{herd.url}/v1/chat/completions", json=body) as r:
            assert r.status == 502
            assert (await r.json())["error"]["type"] == "api_error"
    trace = herd.services.recent_traces[-1]
    assert trace.status == "failed"
    # every node was tried once: the first try and one retry per other node, as the header says
    assert len(trace.attempts) == len(fleet.nodes)
    assert trace.retries == retries == len(fleet.nodes) - 1


async def test_mid_stream_failure_ends_the_stream_with_an_error(herd, fleet, closing):
    fleet.nodes["alpha"].set_fault(Fault(kind="drop_mid_stream", after_chunks=2))
    client = native(herd.url, closing)
    received = []
    with pytest.raises(ollama.ResponseError) as info:
        async for part in await client.chat(MODEL, messages=[{"role": "user", "content": "x"}],
                                            stream=True):
            received.append(part)
    assert received  # the first chunks did arrive
    assert "mid-stream" in info.value.error
    assert herd.services.recent_traces[-1].status == "failed"

    fleet.nodes["alpha"].set_fault(Fault(kind="drop_mid_stream", after_chunks=2))
    oa = oai(herd.url, closing)
    with pytest.raises(openai.APIError):
        async for _ in await oa.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True):
            pass


async def test_fallback_models_serve_the_next_model(herd, fleet):
    body = {"model": "not-anywhere:1b", "fallback_models": ["qwen2.5:7b"], "stream": False,
            "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{herd.url}/api/chat", json=body) as r:
            payload = await r.json()
            assert r.status == 200, payload
            assert r.headers["X-Fleet-Fallback"] == "qwen2.5:7b"
    assert payload["model"] == "qwen2.5:7b"


async def test_routing_works_with_only_the_backend_plugin(fleet, herd_router, herd_agent, closing):
    router = await herd_router(plugins="backend-ollama")
    assert router.services.signals == []
    for name, node in fleet.nodes.items():
        await herd_agent(router.url, node.url, name)
    await wait_for(lambda: len(router.services.fleet.nodes) == 2)
    reply = await native(router.url, closing).chat(
        MODEL, messages=[{"role": "user", "content": "hi"}])
    assert reply.message.content
    assert router.services.recent_traces[-1].score_breakdown == {}


async def _get_json(url: str):
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as r:
            assert r.status == 200
            return json.loads(await r.read())


async def test_context_protection_avoids_a_reload_of_the_hot_model(herd, fleet):
    alpha = fleet.nodes["alpha"]
    loads_before = alpha.stats["loads"]
    body = {"model": MODEL, "stream": False, "options": {"num_ctx": 1024, "num_predict": 4},
            "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{herd.url}/api/chat", json=body) as r:
            assert r.status == 200
            assert r.headers["X-Fleet-Context-Protection"] == \
                "num_ctx=1024 raised to the loaded 4096 (no reload)"
    assert alpha.stats["loads"] == loads_before  # the loaded model was not reloaded
    assert herd.services.events[-1]["kind"] == "context_num_ctx_would_reload"


async def test_thinking_model_budget_and_headers(herd, fleet):
    # no node holds a thinking model yet: pull one onto alpha's disk, as a user would
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{fleet.nodes['alpha'].url}/api/pull",
                             json={"model": "deepseek-r1:7b", "stream": False}) as r:
            assert r.status == 200
        await wait_for(lambda: "deepseek-r1:7b" in herd.services.fleet.nodes["alpha"].available)
        body = {"model": "deepseek-r1:7b", "stream": False, "options": {"num_predict": 50},
                "messages": [{"role": "user", "content": "2+2?"}]}
        async with http.post(f"{herd.url}/api/chat", json=body) as r:
            payload = await r.json()
            assert r.status == 200, payload
            assert r.headers["X-Thinking-Budget"] == "1024"
            assert int(r.headers["X-Thinking-Tokens"]) > 0
            assert int(r.headers["X-Output-Tokens"]) >= 0
            assert r.headers["X-Budget-Used"].endswith("%")
            assert r.headers["X-Done-Reason"] == payload["done_reason"]
    assert payload["message"]["thinking"]
    details = herd.services.recent_traces[-1].details
    assert details["budget"] == 1024 and details["thinking_tokens"] > 0


async def test_thinking_split_of_a_stream_is_in_the_trace(herd, fleet):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{fleet.nodes['alpha'].url}/api/pull",
                             json={"model": "deepseek-r1:7b", "stream": False}) as r:
            assert r.status == 200
        await wait_for(lambda: "deepseek-r1:7b" in herd.services.fleet.nodes["alpha"].available)
        body = {"model": "deepseek-r1:7b", "options": {"num_predict": 50},
                "messages": [{"role": "user", "content": "2+2?"}]}
        async with http.post(f"{herd.url}/api/chat", json=body) as r:
            lines = [json.loads(line) for line in (await r.read()).splitlines()]
    thinking = sum(len(x["message"].get("thinking") or "") for x in lines)
    trace = herd.services.recent_traces[-1]
    assert trace.stream and trace.details["thinking_tokens"] == min(lines[-1]["eval_count"], thinking // 4)
    assert trace.details["output_tokens"] == lines[-1]["eval_count"] - trace.details["thinking_tokens"]
    assert trace.details["done_reason"] == lines[-1]["done_reason"]
    await store_of(herd.services).flush()
    import sqlite3
    [(stored,)] = sqlite3.connect(store_of(herd.services).path).execute(
        "SELECT details FROM request_traces WHERE model='deepseek-r1:7b'").fetchall()
    assert json.loads(stored)["budget"] == 1024


async def test_tags_reach_the_trace_store(herd, fleet):
    body = {"model": MODEL, "stream": False, "metadata": {"tags": ["batch"]},
            "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{herd.url}/api/chat", json=body,
                             headers={"X-App-Tag": "aider", "X-Herd-Tags": "team-a, nightly"}) as r:
            assert r.status == 200
    await store_of(herd.services).flush()
    import sqlite3
    db = sqlite3.connect(store_of(herd.services).path)
    [(tags,)] = db.execute("SELECT tags FROM request_traces").fetchall()
    assert json.loads(tags) == ["aider", "team-a", "nightly", "batch"]


async def start_herd(fleet, herd_router, herd_agent, env):
    router = await herd_router(env=env)
    for name, node in fleet.nodes.items():
        await herd_agent(router.url, node.url, name)
    await wait_for(lambda: all(n.available for n in router.services.fleet.nodes.values())
                   and len(router.services.fleet.nodes) == 2)
    return router


async def test_auto_pull_puts_a_missing_model_on_a_node_then_serves_it(fleet, herd_router, herd_agent):
    router = await start_herd(fleet, herd_router, herd_agent, {"FLEET_AUTO_PULL": "true"})
    body = {"model": "qwen3:8b", "stream": False, "think": False, "options": {"num_predict": 4},
            "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/api/chat", json=body) as r:
            assert r.status == 200, await r.text()
            target = r.headers["X-Fleet-Auto-Pull"]
            assert r.headers["X-Fleet-Node"] == target
        async with http.get(f"{fleet.nodes[target].url}/api/tags") as r:
            assert "qwen3:8b" in {m["name"] for m in (await r.json())["models"]}
        async with http.post(f"{router.url}/api/chat", json={**body, "model": "no-such:9b"}) as r:
            assert r.status == 404  # the registry has no such model to pull


async def test_auto_pull_and_vram_fallback_are_off_by_default(herd):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{herd.url}/api/chat", json={"model": "qwen3:8b", "messages": []}) as r:
            assert r.status == 404 and "X-Fleet-Auto-Pull" not in r.headers


async def test_vram_fallback_never_serves_another_line(fleet, herd_router, herd_agent):
    # llama3.2:3b is hot, qwen2.5:7b cold: another line, so qwen2.5:7b itself answers (the
    # same-line case is in plugins/herd-backend-ollama/tests/test_backend_ollama_meaning_e2e.py)
    router = await start_herd(fleet, herd_router, herd_agent, {"FLEET_VRAM_FALLBACK": "1"})
    body = {"model": "qwen2.5:7b", "stream": False, "messages": [{"role": "user", "content": "hi"}],
            "options": {"num_predict": 4}}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/api/chat", json=body) as r:
            payload = await r.json()
            assert r.status == 200
            assert "X-Fleet-Vram-Fallback" not in r.headers
            assert r.headers["X-Fleet-Served-Model"] == "qwen2.5:7b"
    assert payload["model"] == "qwen2.5:7b"
