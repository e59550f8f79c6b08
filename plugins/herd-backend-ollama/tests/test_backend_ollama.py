"""The Ollama backend alone: the node probe against a recorded Ollama, and the fleet listings."""

import aiohttp
from aiohttp import web
from herd_api_formats.requests import estimate_tokens
from herd_backend_ollama import node, router

from herd_kernel.api import NodeContext
from herd_kernel.fleet import Fleet
from herd_kernel.models import Heartbeat, structure
from herd_kernel.testing import heartbeat_payload, make_config, make_host

# recorded from Ollama 0.12.3 (shapes per docs/api.md), trimmed
PS = {"models": [{"name": "llama3.2:3b", "model": "llama3.2:3b", "size": 3600000000,
                  "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
                  "details": {"parent_model": "", "format": "gguf", "family": "llama",
                              "families": ["llama"], "parameter_size": "3.2B",
                              "quantization_level": "Q4_K_M"},
                  "expires_at": "2026-11-23T14:38:31.83753-07:00", "size_vram": 3600000000,
                  "context_length": 4096}]}
TAGS = {"models": [
    {"name": "llama3.2:3b", "model": "llama3.2:3b", "modified_at": "2025-05-04T17:37:44.706015396-07:00",
     "size": 2019393189, "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
     "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                 "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}},
    {"name": "nomic-embed-text:latest", "model": "nomic-embed-text:latest",
     "modified_at": "2025-05-04T17:37:44.706015396-07:00", "size": 274302450, "digest": "0a1",
     "details": {"family": "nomic-bert"}, "capabilities": ["embedding"]},
    {"name": 17}, "junk"]}


def fake_ollama(ps=PS, tags=TAGS, version=None, broken=()):
    app = web.Application()

    def reply(path, body):
        async def handler(request):
            if path in broken:
                return web.json_response({"error": "boom"}, status=500)
            return web.json_response(body)
        return handler

    app.router.add_get("/api/ps", reply("/api/ps", ps))
    app.router.add_get("/api/tags", reply("/api/tags", tags))
    app.router.add_get("/api/version", reply("/api/version", version or {"version": "0.12.3"}))
    return app


async def probe(server_url):
    config = make_config(make_host("backend-ollama"), env={"FLEET_NODE_OLLAMA_HOST": server_url})
    async with aiohttp.ClientSession() as http:
        return await node.probe(NodeContext(config=config, node_id="n", http=http))


async def test_probe_reports_loaded_available_and_version(aiohttp_server):
    server = await aiohttp_server(fake_ollama())
    report = (await probe(str(server.make_url("")).rstrip("/")))["endpoints"][0]
    assert report["healthy"] and report["version"] == "0.12.3"
    [loaded] = report["models_loaded"]
    assert loaded["name"] == "llama3.2:3b" and loaded["context_length"] == 4096
    assert loaded["size_bytes"] == 3600000000
    names = [m["name"] for m in report["models_available"]]
    assert names == ["llama3.2:3b", "nomic-embed-text:latest"]  # junk entries dropped
    assert report["models_available"][1]["capabilities"] == ["embedding"]
    # the fragment is a valid heartbeat
    hb = structure({"node_id": "n", "endpoints": [report]}, Heartbeat)
    assert hb.endpoints[0].models_available[0].size_bytes == 2019393189


async def test_probe_of_a_sick_ollama_is_unhealthy_not_an_exception(aiohttp_server):
    server = await aiohttp_server(fake_ollama(broken={"/api/tags"}))
    report = (await probe(str(server.make_url("")).rstrip("/")))["endpoints"][0]
    assert report["healthy"] is False
    assert report["models_available"] == []  # nothing it cannot prove
    report = (await probe("http://127.0.0.1:9"))["endpoints"][0]  # nothing listens on port 9
    assert report["healthy"] is False and report["models_loaded"] == []


class FakeServices:
    def __init__(self, *beats):
        self.fleet = Fleet()
        for body in beats:
            self.fleet.apply_heartbeat(structure(body, Heartbeat), peer_ip="127.0.0.1")


def test_tags_union_says_which_nodes_hold_each_model():
    services = FakeServices(
        heartbeat_payload("b", available=[{"name": "m:1", "size_bytes": 5}]),
        heartbeat_payload("a", available=[{"name": "m:1", "size_bytes": 5}, "z:2"]),
    )
    body = router.tags_body(services)
    assert [(m["name"], m["fleet_nodes"]) for m in body["models"]] == [("m:1", ["a", "b"]), ("z:2", ["a"])]
    entry = body["models"][0]
    assert entry["model"] == entry["name"] and entry["size"] == 5
    assert set(entry["details"]) >= {"format", "family", "parameter_size", "quantization_level"}


def test_offline_nodes_are_left_out_of_listings():
    services = FakeServices(heartbeat_payload("a", loaded=["m:1"]), heartbeat_payload("b", loaded=["m:1"]))
    services.fleet.nodes["b"].status = "offline"
    assert router.ps_body(services)["models"][0]["fleet_nodes"] == ["a"]


def test_fleet_version_is_the_lowest_numeric_version():
    beats = []
    for node_id, version in (("a", "0.12.3"), ("b", "0.9.10"), ("c", "garbage")):
        body = heartbeat_payload(node_id)
        body["endpoints"][0]["version"] = version
        beats.append(body)
    assert router.fleet_version(FakeServices(*beats)) == "0.9.10"
    assert router.fleet_version(FakeServices()) == router.SPOKEN_VERSION != "0.0.0"


def test_openai_model_entries():
    assert router.openai_model("hf.co/org/repo:q4", "2025-05-04T17:37:44.706015396-07:00") == {
        "id": "hf.co/org/repo:q4", "object": "model", "created": 1746405464, "owned_by": "org"}
    assert router.openai_model("llama3.2:3b", None)["owned_by"] == "library"


def test_token_estimate_counts_text_messages_images_and_tools():
    assert estimate_tokens({}) == 0
    assert estimate_tokens({"prompt": "x" * 400}) == 100
    chat = {"messages": [{"role": "system", "content": "a" * 40},
                         {"role": "user", "content": [{"type": "text", "text": "b" * 40},
                                                      {"type": "image_url", "image_url": "data:"}]},
                         {"role": "user", "content": "c", "images": ["i1", "i2"]}, "junk"]}
    assert estimate_tokens(chat) == 3 * 4 + 81 // 4 + 3 * 768
    tools = {"tools": [{"type": "function", "function": {"name": "f"}}]}
    assert estimate_tokens(tools) > 0
