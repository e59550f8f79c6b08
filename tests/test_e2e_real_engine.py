"""Real inference through Herd: a real llama.cpp engine (llama-cpp-python serving SmolLM2-135M, the
``llama_server`` fixture) on a node whose agent reports it as an OpenAI-compatible endpoint, and
the real ``openai`` and ``ollama`` clients talking to the router. OpenAI requests reach the engine
natively; Ollama requests are translated there and back, streamed and not. Run with the router's
OpenAI backend alone and beside the Ollama backend (whose routes then serve these paths)."""

from __future__ import annotations

import aiohttp
import ollama
import openai
import pytest

from herd_kernel.testing import wait_for

pytestmark = pytest.mark.real_engine

NODE = "llama-box"
QUESTION = "What is the capital of France?"
MESSAGES = [{"role": "user", "content": QUESTION}]


async def direct(llama_server: str) -> str:
    """The engine's own greedy answer to QUESTION (16 tokens), asked without Herd: what every
    answer through Herd must be, word for word. (SmolLM2-135M's words for it vary with the CPU
    llama.cpp was built for; a relay that changes nothing gives the same ones.)"""
    async with openai.AsyncOpenAI(base_url=f"{llama_server}/v1", api_key="unused") as client:
        reply = await client.chat.completions.create(
            model="smollm2", messages=MESSAGES, temperature=0, max_tokens=16)
    assert reply.choices[0].message.content.strip()
    return reply.choices[0].message.content


@pytest.fixture(params=["backend-openai", None], ids=["openai-alone", "all-plugins"])
async def router(request, llama_server, herd_router, herd_agent):
    router = await herd_router(plugins=request.param)
    await herd_agent(router.url, "http://127.0.0.1:9", NODE, plugins="backend-openai",
                     env={"FLEET_NODE_OPENAI_URLS": llama_server})
    fleet = router.services.fleet
    await wait_for(lambda: NODE in fleet.nodes and "smollm2:latest" in fleet.nodes[NODE].available)
    return router


def last_trace(router):
    return router.services.recent_traces[-1]


async def test_openai_client_gets_a_real_answer_from_the_engines_node(router, llama_server):
    async with openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused") as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="smollm2", messages=MESSAGES, temperature=0, max_tokens=16)
        reply = raw.parse()
    assert reply.choices[0].message.content == await direct(llama_server)
    assert raw.headers["X-Fleet-Node"] == NODE
    trace = last_trace(router)
    assert (trace.status, trace.node_id, trace.api) == ("completed", NODE, "openai")
    assert trace.completion_tokens == reply.usage.completion_tokens > 0


async def test_openai_client_streams_a_real_answer(router, llama_server):
    async with openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused") as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="smollm2", messages=MESSAGES, temperature=0, max_tokens=16, stream=True)
        assert raw.headers["X-Fleet-Node"] == NODE
        stream = raw.parse()
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == await direct(llama_server)
    await wait_for(lambda: last_trace(router).stream and last_trace(router).status == "completed")
    assert last_trace(router).ttft_ms is not None


async def test_ollama_client_chat_is_translated_both_ways(router, llama_server):
    async with ollama.AsyncClient(host=router.url) as client:
        reply = await client.chat("smollm2", messages=MESSAGES,
                                  options={"temperature": 0, "num_predict": 16})
    assert reply.message.content == await direct(llama_server)
    assert reply.done and reply.done_reason in ("stop", "length")
    assert reply.eval_count > 0 and reply.prompt_eval_count > 0 and reply.total_duration > 0
    trace = last_trace(router)
    assert (trace.status, trace.node_id, trace.api, trace.path) == (
        "completed", NODE, "ollama", "/api/chat")
    assert trace.completion_tokens == reply.eval_count
    assert trace.details["translated"] == {"from": "/api/chat", "to": "/v1/chat/completions"}


async def test_ollama_client_streams_a_translated_answer(router, llama_server):
    async with ollama.AsyncClient(host=router.url) as client:
        parts = [part async for part in await client.chat(
            "smollm2", messages=MESSAGES, stream=True,
            options={"temperature": 0, "num_predict": 16})]
    assert len(parts) > 2 and not any(p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content for p in parts) == await direct(llama_server)
    assert parts[-1].eval_count > 0
    await wait_for(lambda: last_trace(router).stream)
    trace = last_trace(router)
    assert trace.status == "completed" and trace.completion_tokens == parts[-1].eval_count
    assert trace.ttft_ms is not None


async def test_ollama_generate_and_its_headers(router, llama_server):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/api/generate", json={
            "model": "smollm2", "prompt": QUESTION, "stream": False, "keep_alive": "5m",
            "options": {"temperature": 0, "num_predict": 16},
        }) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
            headers = r.headers
    assert body["response"] == await direct(llama_server) and body["done"] is True
    assert headers["X-Fleet-Node"] == NODE
    assert headers["X-Fleet-Translated"] == "/api/generate -> /v1/chat/completions"
    assert headers["X-Fleet-Dropped"] == "keep_alive"  # said, not silently lost
    assert last_trace(router).details["dropped"] == ["keep_alive"]


async def test_a_model_no_engine_listed_is_404_for_both_clients(router):
    """The engine would answer any name with its one model; Herd sends it only what it listed."""
    async with openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused",
                                  max_retries=0) as client:
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert "gpt-4o" in str(info.value)
    async with ollama.AsyncClient(host=router.url) as client:
        with pytest.raises(ollama.ResponseError) as caught:
            await client.chat("gpt-4o", messages=MESSAGES)
    assert caught.value.status_code == 404


async def test_the_listings_show_the_engines_model(router):
    async with openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused") as client:
        ids = [m.id async for m in client.models.list()]
    assert "smollm2" in ids
    async with ollama.AsyncClient(host=router.url) as client:
        listed = await client.list()
    assert "smollm2" in [m.model for m in listed.models]


@pytest.mark.parametrize("path,body", [
    ("/api/generate", {"model": "smollm2"}),
    ("/api/chat", {"model": "smollm2", "messages": [], "keep_alive": "10m"}),
    ("/api/generate", {"model": "smollm2", "keep_alive": 0}),
])
async def test_a_load_or_unload_is_answered_as_ollama_does_without_running_the_engine(
        router, path, body):
    """An empty generate or chat is Ollama's load (or unload) command; these engines keep their
    one model loaded, so it is answered at once instead of running inference on nothing."""
    traces = len(router.services.recent_traces)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}{path}", json=body) as r:
            assert r.status == 200
            answer = await r.json()
    assert answer["done"] is True and answer["model"] == "smollm2"
    assert answer["done_reason"] == ("unload" if body.get("keep_alive") == 0 else "load")
    assert ("message" in answer) == (path == "/api/chat")
    assert len(router.services.recent_traces) == traces  # nothing was routed to the engine


@pytest.mark.parametrize("path,body,answer", [
    ("/api/embed", {"model": "smollm2"}, {"model": "smollm2", "embeddings": []}),
    ("/api/embed", {"model": "smollm2", "input": []}, {"model": "smollm2", "embeddings": []}),
    ("/api/embed", {"model": "smollm2", "input": ""}, {"model": "smollm2", "embeddings": []}),
    ("/api/embeddings", {"model": "smollm2", "prompt": ""}, {"embedding": []}),
])
async def test_an_embed_of_nothing_is_no_vectors_as_in_ollama(router, path, body, answer):
    traces = len(router.services.recent_traces)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}{path}", json=body) as r:
            assert r.status == 200
            assert await r.json() == answer
    assert len(router.services.recent_traces) == traces


async def test_show_describes_an_engines_model_from_its_listing(router):
    """Open WebUI and the ollama client ask /api/show; a llama.cpp engine has none, so the route
    answers from what the endpoint listed (said in a header)."""
    async with ollama.AsyncClient(host=router.url) as client:
        shown = await client.show("smollm2")
    assert shown.capabilities == ["completion"] and shown.template == ""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/api/show", json={"model": "smollm2"}) as r:
            assert r.status == 200 and r.headers["X-Fleet-Node"] == NODE
            assert "endpoint's listing" in r.headers["X-Fleet-Described"]


async def test_the_engines_own_name_for_the_model_is_used_and_said(router):
    """llama.cpp matches names exactly; a client may write them as Ollama allows (any case, a
    :latest tag). The engine gets its own spelling, and the client hears of it."""
    async with openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused") as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="SmolLM2:latest", messages=MESSAGES, temperature=0, max_tokens=8)
    assert raw.headers["X-Fleet-Engine-Model"] == "smollm2"
    assert raw.parse().choices[0].message.content
    assert last_trace(router).details["engine_model"] == "smollm2"
    async with openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused") as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="smollm2", messages=MESSAGES, temperature=0, max_tokens=8)
    assert "X-Fleet-Engine-Model" not in raw.headers
