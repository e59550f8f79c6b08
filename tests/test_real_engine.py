"""The real engine the end-to-end tests build on (llama-cpp-python serving SmolLM2-135M, from the
``llama_server`` fixture) answers the way those tests will rely on: real tokens through the real
``openai`` client, its model alias listed, SSE ending with ``data: [DONE]``."""

from __future__ import annotations

import json

import aiohttp
import pytest
from openai import AsyncOpenAI

pytestmark = pytest.mark.real_engine

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# SmolLM2-135M's greedy words vary with the CPU llama.cpp was built for (AVX2 and AVX-512 builds
# answer QUESTION differently); asked these ways, some answer names Paris on every build tried
PHRASINGS = ["What is the capital of France?", "Name the capital city of France.",
             "What is the capital of France? Answer in one word."]


async def test_models_lists_the_alias(llama_server: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{llama_server}/v1/models") as r:
            assert r.status == 200
            body = await r.json()
    assert "smollm2" in [model["id"] for model in body["data"]]


async def test_openai_client_gets_a_real_answer(llama_server: str) -> None:
    """A real model, not an echo: it knows the capital of France."""
    answers = []
    async with AsyncOpenAI(base_url=f"{llama_server}/v1", api_key="unused") as client:
        for phrasing in PHRASINGS:
            reply = await client.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": phrasing}],
                temperature=0, max_tokens=16)
            assert reply.usage.completion_tokens > 0
            answers.append(reply.choices[0].message.content)
    assert any("Paris" in answer for answer in answers), answers


async def test_openai_client_streams_a_real_answer(llama_server: str) -> None:
    async with AsyncOpenAI(base_url=f"{llama_server}/v1", api_key="unused") as client:
        stream = await client.chat.completions.create(
            model="smollm2", messages=QUESTION, temperature=0, max_tokens=16, stream=True
        )
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert len([piece for piece in pieces if piece]) > 1, f"not streamed token by token: {pieces}"
    async with AsyncOpenAI(base_url=f"{llama_server}/v1", api_key="unused") as client:
        whole = await client.chat.completions.create(
            model="smollm2", messages=QUESTION, temperature=0, max_tokens=16)
    assert "".join(pieces) == whole.choices[0].message.content  # the same answer, in pieces


async def test_sse_frames_end_with_done(llama_server: str) -> None:
    request = {
        "model": "smollm2",
        "messages": QUESTION,
        "temperature": 0,
        "max_tokens": 16,
        "stream": True,
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{llama_server}/v1/chat/completions", json=request) as r:
            assert r.status == 200
            assert r.content_type == "text/event-stream"
            text = (await r.read()).decode()
    data = [line[len("data:") :].strip() for line in text.splitlines() if line.startswith("data:")]
    assert data[-1] == "[DONE]", f"last frame: {data[-1:]}"
    chunks = [json.loads(frame) for frame in data[:-1]]
    assert chunks, "no chunk before [DONE]"
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
