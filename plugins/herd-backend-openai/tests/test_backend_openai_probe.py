"""The node probe against small fake engines on 127.0.0.1 that answer as llama-server, vLLM and
LM Studio do (shapes from their servers' sources and research/real-backends.md)."""

import socket

import aiohttp
from aiohttp import web
from herd_backend_openai import node
from structlog.testing import capture_logs

from herd_kernel.api import NodeContext
from herd_kernel.testing import make_config, make_host

# llama-server 0.6.0-dev: an Ollama-like "models" list beside OpenAI's "data"
LLAMA_MODELS = {
    "models": [{"name": "smollm2", "model": "smollm2", "modified_at": "", "size": "",
                "digest": "", "type": "model", "capabilities": ["completion"]}],
    "object": "list",
    "data": [{"id": "smollm2", "object": "model", "created": 1763805600, "owned_by": "llamacpp",
              "meta": {"vocab_type": 2, "n_vocab": 49152, "n_ctx_train": 8192, "n_embd": 576,
                       "n_params": 134515008, "size": 98352480}}],
}
LLAMA_PROPS = {"default_generation_settings": {"n_ctx": 2048}, "total_slots": 4,
               "model_path": "/m/SmolLM2-135M-Instruct.Q4_1.gguf", "build_info": "b6500-abc1234"}
VLLM_MODELS = {"object": "list", "data": [
    {"id": "Qwen/Qwen2.5-0.5B-Instruct", "object": "model", "created": 1763805600,
     "owned_by": "vllm", "root": "Qwen/Qwen2.5-0.5B-Instruct", "parent": None,
     "max_model_len": 32768, "permission": []}]}
STUDIO_MODELS = {"object": "list", "data": [
    {"id": "qwen2.5-7b-instruct", "object": "model", "owned_by": "organization_owner"},
    {"id": "text-embedding-nomic-embed-text-v1.5", "object": "model",
     "owned_by": "organization_owner"}]}
STUDIO_V0 = {"object": "list", "data": [
    {"id": "qwen2.5-7b-instruct", "object": "model", "type": "llm", "state": "loaded",
     "max_context_length": 32768, "loaded_context_length": 4096},
    {"id": "text-embedding-nomic-embed-text-v1.5", "object": "model", "type": "embeddings",
     "state": "not-loaded", "max_context_length": 2048}]}


CALLS = web.AppKey("calls", dict)


def fake_engine(routes: dict, status: dict | None = None):
    """An aiohttp app answering each path with its JSON body (None: an empty body), counting
    calls in ``app[CALLS]``."""
    app = web.Application()
    calls = app[CALLS] = {}
    status = status or {}

    def reply(path, body):
        async def handler(request):
            calls[path] = calls.get(path, 0) + 1
            if body is None:
                return web.Response(status=status.get(path, 200))
            return web.json_response(body, status=status.get(path, 200))
        return handler

    for path, body in routes.items():
        app.router.add_get(path, reply(path, body))
    return app


def llama_server(health_status=200):
    health = ({"status": "ok"} if health_status == 200 else
              {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}})
    return fake_engine({"/v1/models": LLAMA_MODELS, "/health": health, "/props": LLAMA_PROPS},
                       {"/health": health_status})


def url_of(server) -> str:
    return str(server.make_url("")).rstrip("/")


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def probe(env: dict, state=None):
    config = make_config(make_host("backend-openai"), env=env)
    async with aiohttp.ClientSession() as http:
        return await node.probe(NodeContext(config=config, node_id="n", http=http, budget=2.0),
                                state)


async def test_llama_server_is_one_healthy_endpoint_with_its_model_loaded(aiohttp_server):
    server = await aiohttp_server(llama_server())
    # a trailing /v1 in the setting is the same engine
    report = await probe({"FLEET_NODE_OPENAI_URLS": f" {url_of(server)}/v1/ "})
    assert report == {"endpoints": [{
        "kind": "openai", "url": url_of(server), "engine": "llama.cpp", "version": "b6500-abc1234",
        "healthy": True, "num_parallel": 4,
        "models_available": [{"name": "smollm2", "size_bytes": 0, "context_length": 8192,
                              "capabilities": ["completion"]}],
        # the loaded context is the server's n_ctx, not the model's training context
        "models_loaded": [{"name": "smollm2", "context_length": 2048}],
    }]}


async def test_vllm_and_lm_studio_side_by_side(aiohttp_server):
    vllm = await aiohttp_server(fake_engine({"/v1/models": VLLM_MODELS, "/health": None,
                                             "/version": {"version": "0.11.0"}}))
    studio = await aiohttp_server(fake_engine({"/v1/models": STUDIO_MODELS,
                                               "/api/v0/models": STUDIO_V0}))
    report = await probe({"FLEET_NODE_OPENAI_URLS": f"{url_of(vllm)},{url_of(studio)}"})
    first, second = report["endpoints"]
    assert (first["engine"], first["version"], first["healthy"]) == ("vllm", "0.11.0", True)
    assert first["models_available"] == [{"name": "Qwen/Qwen2.5-0.5B-Instruct", "size_bytes": 0,
                                          "context_length": 32768,
                                          "capabilities": ["completion"]}]
    assert first["models_loaded"] == [{"name": "Qwen/Qwen2.5-0.5B-Instruct",
                                       "context_length": 32768}]
    # LM Studio has no /health (404): its model list decides; only "loaded" models are loaded
    assert (second["engine"], second["healthy"]) == ("lm-studio", True)
    assert [(m["name"], m["context_length"], m["capabilities"])
            for m in second["models_available"]] == [
        ("qwen2.5-7b-instruct", 32768, ["completion"]),
        ("text-embedding-nomic-embed-text-v1.5", 2048, ["embedding"])]
    assert second["models_loaded"] == [{"name": "qwen2.5-7b-instruct", "context_length": 4096}]


async def test_a_loading_engine_is_unhealthy_and_a_dead_url_is_not_an_exception(aiohttp_server):
    loading = await aiohttp_server(llama_server(health_status=503))
    dead = f"http://127.0.0.1:{free_port()}"
    report = await probe({"FLEET_NODE_OPENAI_URLS": f"{url_of(loading)},{dead}"})
    busy, gone = report["endpoints"]
    assert busy["healthy"] is False and busy["models_loaded"] == []
    assert gone == {"kind": "openai", "url": dead, "engine": "openai-compatible", "version": "",
                    "healthy": False, "num_parallel": 0, "models_available": [],
                    "models_loaded": []}


async def test_garbage_answers_give_an_unhealthy_endpoint(aiohttp_server):
    app = web.Application()

    async def junk(request):
        return web.Response(text="[" * 100_000, content_type="application/json")

    async def wrong(request):
        return web.json_response({"data": [None, 5, {"id": 7}, {"id": "ok", "meta": [],
                                                                  "max_model_len": 1e999}]})

    app.router.add_get("/v1/models", junk)
    app.router.add_get("/health", junk)
    server = await aiohttp_server(app)
    [report] = (await probe({"FLEET_NODE_OPENAI_URLS": url_of(server)}))["endpoints"]
    assert report["healthy"] is False and report["models_available"] == []

    app = web.Application()
    app.router.add_get("/v1/models", wrong)
    server = await aiohttp_server(app)
    [report] = (await probe({"FLEET_NODE_OPENAI_URLS": url_of(server)}))["endpoints"]
    assert report["healthy"] is True and report["engine"] == "openai-compatible"
    assert report["models_available"] == [{"name": "ok", "size_bytes": 0, "context_length": 0,
                                           "capabilities": ["completion"]}]


async def test_engine_is_identified_once_and_state_changes_are_logged_once(aiohttp_server):
    app = llama_server()
    server = await aiohttp_server(app)
    dead = f"http://127.0.0.1:{free_port()}"
    state = node.ProbeState()
    env = {"FLEET_NODE_OPENAI_URLS": f"{url_of(server)},{dead}"}
    with capture_logs() as logs:
        for _ in range(3):
            report = await probe(env, state)
    assert report["endpoints"][0]["engine"] == "llama.cpp"
    assert app[CALLS]["/v1/models"] == 3 and app[CALLS]["/props"] == 1
    assert sorted((e["event"], e["url"]) for e in logs) == [
        ("openai endpoint down", dead), ("openai endpoint up", url_of(server))]


async def test_port_probing_finds_engines_and_leaves_silent_ports_out(aiohttp_server,
                                                                     monkeypatch):
    server = await aiohttp_server(llama_server())
    silent = free_port()
    monkeypatch.setattr(node, "LOCAL_PORTS", (silent, server.port))
    with capture_logs() as logs:
        report = await probe({"FLEET_NODE_OPENAI_PROBE": "true"})
    assert [e["url"] for e in report["endpoints"]] == [f"http://127.0.0.1:{server.port}"]
    assert [e["event"] for e in logs] == ["openai endpoint up"]  # nothing about the silent port
    report = await probe({"FLEET_NODE_OPENAI_PROBE": "false"})
    assert report == {"endpoints": []}


def test_probed_ports_skip_the_nodes_own_ollama_router_and_proxy():
    config = make_config(make_host("backend-openai"), env={
        "FLEET_NODE_OPENAI_PROBE": "1",
        "FLEET_NODE_OLLAMA_HOST": "localhost:8080",
        "FLEET_NODE_ROUTER_URL": "http://127.0.0.1:1234",
        "FLEET_NODE_OPENAI_URLS": "127.0.0.1:9999,http://127.0.0.1:9999/",
    })
    configured, probed = node.endpoint_urls(config)
    assert configured == ["http://127.0.0.1:9999"]
    assert probed == ["http://127.0.0.1:8000"]
    config = make_config(make_host("backend-openai"), env={
        "FLEET_NODE_OPENAI_PROBE": "1", "FLEET_NODE_PROXY_PORT": "8000",
        "FLEET_NODE_OPENAI_URLS": "http://localhost:1234"})
    assert node.endpoint_urls(config)[1] == ["http://127.0.0.1:8080"]
