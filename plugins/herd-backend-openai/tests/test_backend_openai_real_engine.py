"""Against a real llama-cpp-python server (SmolLM2-135M, the ``llama_server`` fixture): the probe
sees it, and Ollama requests translated for it come back as bodies the real ``ollama`` client's
own response models accept. See the README's "Tests with a real engine"."""

import json
import time

import aiohttp
import pytest
from herd_backend_openai import node
from herd_backend_openai.translate import SseToNdjson, to_openai
from ollama import ChatResponse, GenerateResponse

from herd_kernel.api import NodeContext
from herd_kernel.testing import make_config, make_host

pytestmark = pytest.mark.real_engine


@pytest.fixture
def engine(llama_server: str) -> str:
    """The shared real engine (``herd_kernel.testing.llama_server``): skipped without one, a
    failure in CI (HERD_REQUIRE_REAL_ENGINE=1)."""
    return llama_server


async def test_probe_sees_the_real_engine(engine):
    config = make_config(make_host("backend-openai"), env={"FLEET_NODE_OPENAI_URLS": engine})
    async with aiohttp.ClientSession() as http:
        report = await node.probe(NodeContext(config=config, node_id="n", http=http))
    [endpoint] = report["endpoints"]
    assert endpoint["healthy"] is True and endpoint["engine"] == "llama.cpp"
    assert [m["name"] for m in endpoint["models_available"]] == ["smollm2"]
    assert [m["name"] for m in endpoint["models_loaded"]] == ["smollm2"]


async def ask(engine: str, path: str, body: dict):
    upstream, payload, dropped = to_openai(path, body, "smollm2", engine="llama.cpp")
    translator = SseToNdjson(path, body["model"], time.monotonic_ns())
    async with aiohttp.ClientSession() as http, http.post(engine + upstream,
                                                          json=payload) as response:
        assert response.status == 200, await response.text()
        if not payload["stream"]:
            return json.loads(translator.whole(await response.read())), dropped
        out = b""
        async for data in response.content.iter_any():  # slices as the socket gives them
            out += translator.frame(data)
        out += translator.end()
    return [json.loads(line) for line in out.splitlines()], dropped


async def test_chat_whole_and_streamed_are_ollama_bodies(engine):
    body = {"model": "smollm2:latest", "messages": [{"role": "user", "content": "Hi"}],
            "options": {"num_predict": 6, "temperature": 0, "num_ctx": 2048},
            "keep_alive": "5m", "stream": False}
    answer, dropped = await ask(engine, "/api/chat", body)
    reply = ChatResponse.model_validate(answer)  # what ollama-python would hand its caller
    assert reply.done and reply.done_reason == "length" and reply.eval_count == 6
    assert reply.model == "smollm2:latest" and reply.message.content
    assert reply.prompt_eval_count and reply.total_duration >= reply.eval_duration > 0
    assert sorted(dropped) == ["keep_alive", "options.num_ctx"]

    lines, _ = await ask(engine, "/api/chat", {**body, "stream": True})
    chunks = [ChatResponse.model_validate(line) for line in lines]
    assert all(not c.done for c in chunks[:-1]) and chunks[-1].done
    assert chunks[-1].done_reason == "length"
    # this engine sends no usage: the count is the deltas it streamed
    assert chunks[-1].eval_count == len(chunks) - 1 == 6
    assert "".join(c.message.content for c in chunks) == reply.message.content


async def test_generate_raw_and_schema_format(engine):
    lines, _ = await ask(engine, "/api/generate", {
        "model": "smollm2", "prompt": "def add(a, b):", "raw": True,
        "options": {"num_predict": 5, "temperature": 0}})
    chunks = [GenerateResponse.model_validate(line) for line in lines]
    assert chunks[-1].done and chunks[-1].done_reason == "length"
    assert "".join(c.response for c in chunks)

    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    answer, _ = await ask(engine, "/api/generate", {
        "model": "smollm2", "prompt": "Give me a JSON object with an age.", "format": schema,
        "stream": False, "options": {"num_predict": 24, "temperature": 0}})
    reply = GenerateResponse.model_validate(answer)
    assert isinstance(json.loads(reply.response)["age"], int)  # the grammar held


async def test_heartbeats_do_not_cut_a_running_stream(engine):
    """llama-cpp-python stops a stream when any request needing its model arrives (its
    ``interrupt_requests``), /v1/models included: after the first probe, probes ask only a route
    outside that lock, so a node's heartbeats never cut its own answers short."""
    config = make_config(make_host("backend-openai"), env={"FLEET_NODE_OPENAI_URLS": engine})
    state = node.ProbeState()
    question = {"model": "smollm2", "stream": True, "max_tokens": 48, "temperature": 0,
                "messages": [{"role": "user", "content": "Tell me about Paris."}]}
    async with aiohttp.ClientSession() as http:
        ctx = NodeContext(config=config, node_id="n", http=http)
        first = await node.probe(ctx, state)
        async with http.post(f"{engine}/v1/chat/completions", json=question) as response:
            frames = [await response.content.readline()]
            for _ in range(3):  # heartbeats while it streams
                again = await node.probe(ctx, state)
                assert again["endpoints"] == first["endpoints"]
            frames += [line async for line in response.content]
    events = [json.loads(f[6:]) for f in frames if f.startswith(b"data: {")]
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert frames[-2:] == [b"data: [DONE]\n", b"\n"]
