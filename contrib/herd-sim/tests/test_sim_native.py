"""The native Ollama API of a simulated node, through the real ``ollama`` client and raw HTTP."""

from __future__ import annotations

import math
import re

import ollama
import pytest

MODEL = "llama3.2:3b"
CREATED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
GO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")
METRICS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
           "eval_count", "eval_duration")
HI = [{"role": "user", "content": "Why is the sky blue?"}]


async def test_liveness_version_and_head(node, http):
    async with http.get(node.url + "/") as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert await r.text() == "Ollama is running"
    async with http.head(node.url + "/") as r:
        assert r.status == 200 and await r.read() == b""
    async with http.get(node.url + "/api/version") as r:
        assert r.headers["Content-Type"] == "application/json; charset=utf-8"
        assert await r.json() == {"version": "0.12.3"}
    async with http.head(node.url + "/api/tags") as r:
        assert r.status == 200


async def test_chat_with_the_ollama_client_streamed_and_not(clients, node):
    client = clients.ollama(node)
    parts = [p async for p in await client.chat(MODEL, messages=HI, stream=True)]
    whole = await client.chat(MODEL, messages=HI)
    streamed = "".join(p.message.content for p in parts)
    assert streamed and streamed == whole.message.content  # deterministic per prompt
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    final = parts[-1]
    assert final.done_reason == "stop" and final.message.role == "assistant"
    # one token per chunk, and the final chunk counts them
    assert final.eval_count == len(parts) - 1 == whole.eval_count
    assert final.total_duration >= final.eval_duration > 0
    assert whole.prompt_eval_count == final.prompt_eval_count > 0


async def test_raw_ndjson_framing_and_final_chunk(node, http, util):
    body = {"model": MODEL, "messages": HI, "options": {"num_predict": 7, "seed": 3},
            "keep_alive": 300}
    async with http.post(node.url + "/api/chat", json=body) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/x-ndjson"
        chunks = await util.ndjson(r)
    assert len(chunks) == 8
    for chunk in chunks:
        assert chunk["model"] == MODEL and CREATED_AT.match(chunk["created_at"])
        assert chunk["message"]["role"] == "assistant" and "content" in chunk["message"]
    assert [c["done"] for c in chunks] == [False] * 7 + [True]
    final = chunks[-1]
    assert final["done_reason"] == "length" and final["message"]["content"] == ""
    assert all(isinstance(final[k], int) and final[k] > 0 for k in METRICS)
    assert final["eval_count"] == 7
    assert final["prompt_eval_count"] == pytest.approx(len("Why is the sky blue?") / 4, abs=6)


async def test_generate_streams_response_and_returns_context(clients, node, http, util):
    async with http.post(node.url + "/api/generate", json={"model": MODEL, "prompt": "hi"}) as r:
        chunks = await util.ndjson(r)
    assert all("response" in c for c in chunks) and chunks[-1]["done"] is True
    assert isinstance(chunks[-1]["context"], list) and all(isinstance(t, int)
                                                           for t in chunks[-1]["context"])
    once = await clients.ollama(node).generate(MODEL, "hi")
    assert once.response == "".join(c["response"] for c in chunks)
    assert len(once.context) == once.prompt_eval_count + once.eval_count
    seeded = await clients.ollama(node).generate(MODEL, "hi", options={"seed": 9})
    assert seeded.response != once.response  # the seed is part of the "randomness"


async def test_names_are_case_insensitive_and_echoed(clients, make_node):
    node = await make_node("small")
    client = clients.ollama(node)
    reply = await client.chat("LLAMA3.2:3B", messages=HI, options={"num_predict": 2})
    assert reply.model == "LLAMA3.2:3B"
    vectors = await client.embed("nomic-embed-text", "hello")  # tag defaults to latest
    assert vectors.model == "nomic-embed-text" and len(vectors.embeddings[0]) == 768


async def test_thinking_models_think_first_unless_told_not_to(clients, make_node, util, http):
    node = await make_node("medium")
    client = clients.ollama(node)
    parts = [p async for p in await client.chat("qwen3:8b", messages=HI, stream=True)]
    kinds = ["thinking" if p.message.thinking else "content" for p in parts[:-1]]
    assert kinds[0] == "thinking" and "content" in kinds
    assert kinds == sorted(kinds, key=lambda k: k != "thinking")  # all thinking, then content
    once = await client.chat("qwen3:8b", messages=HI)
    assert once.message.thinking and once.message.content
    plain = await client.chat("qwen3:8b", messages=HI, think=False)
    assert plain.message.thinking is None and plain.message.content
    with pytest.raises(ollama.ResponseError) as info:
        await client.chat(MODEL, messages=HI, think=True)
    assert info.value.status_code == 400
    assert info.value.error == f'"{MODEL}" does not support thinking'
    generated = await client.generate("deepseek-r1:7b", "2+2?")
    assert generated.thinking and generated.response
    async with http.post(node.url + "/api/chat",
                         json={"model": "qwen3:8b", "messages": HI, "think": "x"}) as r:
        assert r.status == 400
        assert (await r.json())["error"].startswith('invalid think value: "x"')


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


async def test_tool_calls_native(clients, node, http, util):
    messages = [{"role": "user", "content": "What is the weather in Tokyo?"}]
    client = clients.ollama(node)
    reply = await client.chat(MODEL, messages=messages, tools=[WEATHER_TOOL])
    [call] = reply.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Tokyo"}
    body = {"model": MODEL, "messages": messages, "tools": [WEATHER_TOOL]}
    async with http.post(node.url + "/api/chat", json=body) as r:
        chunks = await util.ndjson(r)
    with_calls = [c for c in chunks if c["message"].get("tool_calls")]
    assert len(with_calls) == 1 and with_calls[0]["done"] is False
    assert with_calls[0]["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "Tokyo"}
    assert chunks[-1]["done_reason"] == "stop"
    # after the tool answered, the model answers in text
    history = [*messages, reply.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_name": "get_weather", "content": "11 degrees"}]
    answer = await client.chat(MODEL, messages=history, tools=[WEATHER_TOOL])
    assert answer.message.content and not answer.message.tool_calls
    with pytest.raises(ollama.ResponseError) as info:
        await client.chat("gemma3:4b", messages=messages, tools=[WEATHER_TOOL])
    assert info.value.status_code == 400
    assert info.value.error == "registry.ollama.ai/library/gemma3:4b does not support tools"


async def test_list_ps_show(clients, node, http):
    client = clients.ollama(node)
    listed = {m.model: m for m in (await client.list()).models}
    assert set(listed) == set(node.profile.models)
    assert listed[MODEL].size == 2_019_393_189 and len(listed[MODEL].digest) == 64
    assert listed[MODEL].details.parameter_size == "3.2B"
    async with http.get(node.url + "/api/tags") as r:
        raw = (await r.json())["models"]
    entry = next(m for m in raw if m["name"] == MODEL)
    assert entry["model"] == MODEL and entry["capabilities"] == ["completion", "tools"]
    assert GO_TIME.match(entry["modified_at"])
    ps = (await client.ps()).models
    assert [m.model for m in ps] == [MODEL] and ps[0].context_length == 4096
    async with http.get(node.url + "/api/ps") as r:
        assert GO_TIME.match((await r.json())["models"][0]["expires_at"])
    shown = await client.show(MODEL)
    assert shown.modelinfo["llama.context_length"] == 131072
    assert shown.capabilities == ["completion", "tools"] and shown.template
    assert shown.details.family == "llama"
    with pytest.raises(ollama.ResponseError) as info:
        await client.show("nope:1b")
    assert info.value.status_code == 404 and info.value.error == "model 'nope:1b' not found"


async def test_embeddings(clients, node, http):
    client = clients.ollama(node)
    result = await client.embed("nomic-embed-text:latest", ["the sky is blue", "a red stone"])
    assert len(result.embeddings) == 2 and all(len(v) == 768 for v in result.embeddings)
    for vector in result.embeddings:
        assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-4)
    again = await client.embed("nomic-embed-text:latest", "the sky is blue")
    assert again.embeddings[0] == result.embeddings[0]
    short = await client.embed("nomic-embed-text:latest", "the sky", dimensions=64)
    assert len(short.embeddings[0]) == 64
    legacy = await client.embeddings("nomic-embed-text:latest", "the sky is blue")
    norm = math.sqrt(math.fsum(x * x for x in legacy.embedding))
    assert len(legacy.embedding) == 768 and not math.isclose(norm, 1.0, rel_tol=1e-3)
    empty = await client.embed("nomic-embed-text:latest", "")
    assert empty.embeddings == []
    with pytest.raises(ollama.ResponseError) as info:
        await client.embed("nope", "x")
    assert info.value.status_code == 404
    assert info.value.error == 'model "nope" not found, try pulling it first'
    with pytest.raises(ollama.ResponseError) as info:
        await client.chat("nomic-embed-text:latest", messages=HI)
    assert info.value.error == '"nomic-embed-text:latest" does not support chat'
    with pytest.raises(ollama.ResponseError) as info:
        await client.generate("nomic-embed-text:latest", "hi")
    assert info.value.error == '"nomic-embed-text:latest" does not support generate'
    async with http.post(node.url + "/api/embed",
                         json={"model": "nomic-embed-text", "input": [1, 2]}) as r:
        assert r.status == 400 and await r.json() == {"error": "invalid input type"}


async def test_pull_then_delete(clients, make_node, http, util):
    node = await make_node("tiny")
    client = clients.ollama(node)
    assert "qwen2.5:7b" not in {m.model for m in (await client.list()).models}
    progress = [p async for p in await client.pull("qwen2.5:7b", stream=True)]
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert {"verifying sha256 digest", "writing manifest"} <= set(statuses)
    layer = [p for p in progress if p.status.startswith("pulling ") and p.digest]
    assert layer[0].status == f"pulling {layer[0].digest[7:19]}"
    completed = [p.completed for p in layer if p.digest == layer[0].digest and p.completed]
    assert completed == sorted(completed) and completed[-1] == layer[0].total
    assert "qwen2.5:7b" in {m.model for m in (await client.list()).models}
    reply = await client.generate("qwen2.5:7b", "hi", options={"num_predict": 3})
    assert reply.eval_count == 3
    assert (await client.pull("qwen2.5:7b")).status == "success"  # stream:false, already there
    # unknown model: 200 stream ending in an error line, or a 500 without streaming
    async with http.post(node.url + "/api/pull", json={"model": "no-such-model"}) as r:
        assert r.status == 200
        assert await util.ndjson(r) == [{"status": "pulling manifest"},
                                        {"error": "pull model manifest: file does not exist"}]
    with pytest.raises(ollama.ResponseError) as info:
        await client.pull("no-such-model")
    assert info.value.status_code == 500
    async with http.delete(node.url + "/api/delete", json={"model": "qwen2.5:7b"}) as r:
        assert r.status == 200 and await r.read() == b""
        assert "Content-Type" not in r.headers
    assert "qwen2.5:7b" not in {m.model for m in (await client.list()).models}
    await client.pull("qwen2.5:7b")
    await client.delete("qwen2.5:7b")  # the client's own call
    async with http.delete(node.url + "/api/delete", json={"model": "qwen2.5:7b"}) as r:
        assert r.status == 404 and await r.json() == {"error": "model 'qwen2.5:7b' not found"}


@pytest.mark.parametrize("path,body,status,error", [
    ("/api/chat", {}, 400, "model is required"),
    ("/api/chat", {"model": "nope", "messages": HI}, 404, "model 'nope' not found"),
    ("/api/generate", {"model": ""}, 404, "model '' not found"),
    ("/api/generate", {"model": MODEL, "raw": True, "system": "x"}, 400,
     "raw mode does not support template, system, or context"),
    ("/api/chat", {"model": MODEL, "messages": HI, "keep_alive": "5x"}, 400,
     'time: unknown unit "x" in duration "5x"'),
    ("/api/chat", {"model": MODEL, "messages": HI, "keep_alive": True}, 400,
     "Unsupported type: 'bool'"),
    ("/api/chat", {"model": 5}, 400,
     "json: cannot unmarshal number into Go struct field ChatRequest.model of type string"),
    ("/api/chat", [1], 400, "json: cannot unmarshal array into Go value of type api.ChatRequest"),
    ("/api/show", {}, 400, "model is required"),
    ("/api/embeddings", {"model": "x"}, 404, 'model "x" not found, try pulling it first'),
])
async def test_error_bodies(node, http, path, body, status, error):
    async with http.post(node.url + path, json=body) as r:
        assert r.status == status
        assert r.headers["Content-Type"] == "application/json; charset=utf-8"
        assert await r.json() == {"error": error}


async def test_bad_bodies_and_routes(node, http):
    async with http.post(node.url + "/api/chat", data=b"") as r:
        assert r.status == 400 and await r.json() == {"error": "missing request body"}
    async with http.post(node.url + "/api/chat", data=b'{"model": "x",}') as r:
        assert r.status == 400
        assert await r.json() == {
            "error": "invalid character '}' looking for beginning of object key string"}
    async with http.post(node.url + "/api/generate", data=b'{"model": "x"') as r:
        assert r.status == 400 and await r.json() == {"error": "unexpected EOF"}
    async with http.get(node.url + "/api/nothing") as r:
        assert r.status == 404 and await r.text() == "404 page not found"
    async with http.get(node.url + "/api/chat") as r:
        assert r.status == 405 and await r.text() == "405 method not allowed"
    async with http.post(node.url + "/api/chat", json={"model": MODEL, "messages": HI,
                                                        "options": {"num_ctx": "x"}}) as r:
        assert (await r.json())["error"] == 'option "num_ctx" must be of type integer'


async def test_load_and_unload_without_a_prompt(make_node, http):
    node = await make_node("small")
    async with http.post(node.url + "/api/chat", json={"model": MODEL, "messages": []}) as r:
        assert r.headers["Content-Type"] == "application/json; charset=utf-8"
        loaded = await r.json()
    assert loaded["done_reason"] == "load" and loaded["done"] is True
    assert loaded["message"] == {"role": "assistant", "content": ""}
    assert MODEL in [m for m, _ctx, _exp in node.loaded_models()]
    async with http.post(node.url + "/api/generate", json={"model": MODEL, "keep_alive": 0}) as r:
        unloaded = await r.json()
    assert unloaded["done_reason"] == "unload" and unloaded["response"] == ""
    assert MODEL not in [m for m, _ctx, _exp in node.loaded_models()]
