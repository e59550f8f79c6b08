"""The OpenAI-compatible ``/v1`` API of a simulated node, through the real ``openai`` client and
raw HTTP (SSE framing)."""

from __future__ import annotations

import base64
import json
import math
import struct

import openai
import pytest

MODEL = "llama3.2:3b"
HI = [{"role": "user", "content": "Say hello"}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


async def test_chat_completion_non_stream(clients, node):
    client = clients.openai(node)
    completion = await client.chat.completions.create(model=MODEL, messages=HI)
    choice = completion.choices[0]
    assert completion.object == "chat.completion" and completion.model == MODEL
    assert completion.id.startswith("chatcmpl-") and completion.system_fingerprint == "fp_ollama"
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage.completion_tokens > 0 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    capped = await client.chat.completions.create(model=MODEL, messages=HI, max_tokens=3)
    assert capped.choices[0].finish_reason == "length" and capped.usage.completion_tokens == 3
    # same prompt, same text as the native API (one engine behind both)
    native = await clients.ollama(node).chat(MODEL, messages=HI)
    assert native.message.content == choice.message.content


async def test_chat_completion_stream_with_the_client(clients, node):
    client = clients.openai(node)
    stream = await client.chat.completions.create(
        model=MODEL, messages=HI, stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert content[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in content[1:])
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(content)


async def test_sse_wire_shape(node, http, util):
    body = {"model": MODEL, "messages": HI, "stream": True, "max_tokens": 4,
            "stream_options": {"include_usage": True}}
    async with http.post(node.url + "/v1/chat/completions", json=body) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
        payloads = await util.sse(r)
    assert payloads[-1] == "[DONE]"
    events = [json.loads(p) for p in payloads[:-1]]
    assert len({(e["id"], e["created"]) for e in events}) == 1
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant",
                                                "content": events[0]["choices"][0]["delta"]["content"]}
    finish, usage = events[-2], events[-1]
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "length"}]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 4
    assert len(events) == 4 + 2


async def test_tool_calls_and_reasoning(clients, node, http, util):
    client = clients.openai(node)
    ask = [{"role": "user", "content": "What's the weather in Oslo?"}]
    completion = await client.chat.completions.create(model=MODEL, messages=ask,
                                                      tools=[WEATHER_TOOL])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo"}  # a JSON string here
    # the round trip: the assistant's call (arguments as a string) and the tool's answer
    history = [*ask, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "3 degrees"}]
    answer = await client.chat.completions.create(model=MODEL, messages=history,
                                                  tools=[WEATHER_TOOL])
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content
    body = {"model": MODEL, "messages": ask, "tools": [WEATHER_TOOL], "stream": True}
    async with http.post(node.url + "/v1/chat/completions", json=body) as r:
        events = [json.loads(p) for p in (await util.sse(r))[:-1]]
    calls = [e for e in events if e["choices"][0]["delta"].get("tool_calls")]
    assert len(calls) == 1
    assert calls[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] == \
        '{"city":"Oslo"}'
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    thought = await client.chat.completions.create(model="qwen3:8b", messages=HI)
    extra = thought.choices[0].message.model_extra
    assert extra["reasoning"] and thought.choices[0].message.content
    quiet = await client.chat.completions.create(model="qwen3:8b", messages=HI,
                                                 reasoning_effort="none")
    assert "reasoning" not in (quiet.choices[0].message.model_extra or {})


async def test_models_list_and_retrieve(clients, make_node):
    node = await make_node("small")
    client = clients.openai(node)
    ids = [m.id async for m in client.models.list()]
    assert sorted(ids) == sorted(node.profile.models)
    model = await client.models.retrieve("LLAMA3.2:3b")
    assert model.id == "LLAMA3.2:3b" and model.owned_by == "library" and model.created > 0
    with pytest.raises(openai.NotFoundError) as info:
        await client.models.retrieve("hf.co/org/repo:q4")  # a slash in the id reaches the route
    assert info.value.body == {"message": "model 'hf.co/org/repo:q4' not found",
                               "type": "not_found_error", "param": None, "code": None}


async def test_embeddings_float_and_base64(clients, node):
    client = clients.openai(node)
    floats = await client.embeddings.create(model="nomic-embed-text", input=["a b", "c"],
                                            encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1] and len(floats.data[0].embedding) == 768
    assert math.isclose(math.fsum(x * x for x in floats.data[0].embedding), 1.0, rel_tol=1e-4)
    assert floats.usage.prompt_tokens > 0
    # the client asks for base64 by default and decodes it itself
    decoded = await client.embeddings.create(model="nomic-embed-text", input="a b")
    assert decoded.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    raw = await client.embeddings.with_raw_response.create(
        model="nomic-embed-text", input="a b", encoding_format="base64")
    b64 = json.loads(raw.content)["data"][0]["embedding"]
    unpacked = struct.unpack("<768f", base64.b64decode(b64))
    assert list(unpacked) == pytest.approx(floats.data[0].embedding, abs=1e-6)
    with pytest.raises(openai.BadRequestError) as info:
        await client.embeddings.create(model="nomic-embed-text", input=[])
    assert info.value.body["message"] == "invalid input"


async def test_openai_error_shapes(clients, node, http):
    client = clients.openai(node)
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(model="does-not-exist", messages=HI)
    assert info.value.body == {"message": "model 'does-not-exist' not found",
                               "type": "not_found_error", "param": None, "code": None}
    async with http.post(node.url + "/v1/chat/completions",
                         json={"model": MODEL, "messages": []}) as r:
        assert r.status == 400
        assert await r.json() == {"error": {"message": "[] is too short - 'messages'",
                                            "type": "invalid_request_error", "param": None,
                                            "code": None}}
    async with http.post(node.url + "/v1/chat/completions", data=b"{nope") as r:
        assert r.status == 400
        assert (await r.json())["error"]["type"] == "invalid_request_error"
    async with http.post(node.url + "/v1/embeddings", json={"model": "nope", "input": "x"}) as r:
        assert r.status == 404
        assert (await r.json())["error"]["message"] == \
            'model "nope" not found, try pulling it first'
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="gemma3:4b", messages=[{"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    assert "image URLs are not currently supported" in info.value.body["message"]


async def test_vision_parts_and_legacy_completions(clients, node):
    client = clients.openai(node)
    pixel = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJ"
             "RU5ErkJggg==")
    seen = await client.chat.completions.create(model="gemma3:4b", messages=[
        {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                     {"type": "image_url",
                                      "image_url": {"url": f"data:image/png;base64,{pixel}"}}]}])
    assert seen.choices[0].message.content and seen.usage.prompt_tokens > 256  # image tokens
    done = await client.completions.create(model=MODEL, prompt="Once upon a time",
                                           max_tokens=5)
    assert done.object == "text_completion" and done.choices[0].finish_reason == "length"
    assert done.usage.completion_tokens == 5 and done.choices[0].text
    pieces = [c async for c in await client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=5, stream=True)]
    assert "".join(c.choices[0].text for c in pieces) == done.choices[0].text
    assert pieces[-1].choices[0].finish_reason == "length"
