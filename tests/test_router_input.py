"""Bad input over real sockets: every error is 4xx JSON in the called API's format, and nothing in
the router's state changes."""

import json

import aiohttp
import pytest

from herd_kernel.app import fleet_status
from herd_kernel.testing import heartbeat_payload


def state_of(router):
    status = fleet_status(router.services)
    status.pop("timestamp")
    status.pop("trace_store")  # a refused request is still traced: that is not fleet state
    for node in status["nodes"]:
        node.pop("last_heartbeat_s_ago")
    return status


@pytest.fixture
async def router(herd_router):
    router = await herd_router()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/heartbeat",
                             json=heartbeat_payload("n1", available=["llama3.2:3b"])) as r:
            assert r.status == 200
    return router


@pytest.mark.parametrize(
    "body,field",
    [
        ({"node_id": "n1", "cpu": {"cores_physical": "lots"}}, "cpu.cores_physical"),
        ({"node_id": "n1", "memory": {"total_gb": -5}}, "memory.total_gb"),
        ({"node_id": 7}, "node_id"),
        ({"cpu": {}}, "node_id"),
        ({"node_id": "n1", "ollama": {"url": "http://x", "models_loaded": "all of them"}},
         "ollama.models_loaded"),
    ],
)
async def test_malformed_heartbeat_is_a_400_naming_the_field(router, body, field):
    before = state_of(router)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/heartbeat", json=body) as r:
            payload = await r.json()
            assert r.status == 400
            assert r.content_type == "application/json"
    assert payload["field"] == field
    assert field.split(".")[-1] in payload["error"]
    assert state_of(router) == before


@pytest.mark.parametrize("raw", [b"", b"{not json", b"null", b"[]", b'"x"', b"\xff\xfe"])
async def test_heartbeat_that_is_not_an_object(router, raw):
    before = state_of(router)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/heartbeat", data=raw) as r:
            assert r.status == 400
            assert "invalid heartbeat" in (await r.json())["error"]
    assert state_of(router) == before


NATIVE_CASES = [
    (b"{nope", 400, "invalid JSON"),
    (b"null", 400, "not null"),
    (b"[]", 400, "not an array"),
    (b"", 400, "missing request body"),
    (b'{"model": 42, "messages": []}', 400, "expected a string, got number"),
    (b'{"messages": []}', 400, "model is required"),
    (b'{"model": "llama3.2:3b", "stream": "yes"}', 400, "'stream'"),
    (b'{"model": "llama3.2:3b", "options": {"num_ctx": "big"}}', 400, 'option "num_ctx" must be of type integer'),
    (b'{"model": "llama3.2:3b", "fallback_models": "x"}', 400, "fallback_models"),
    (b'{"model": "no-such-model", "messages": []}', 404, "model 'no-such-model' not found"),
]


@pytest.mark.parametrize("raw,status,message", NATIVE_CASES)
async def test_native_chat_errors(router, raw, status, message):
    before = state_of(router)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/api/chat", data=raw) as r:
            body = await r.json()
            assert r.status == status
    assert set(body) == {"error"} and isinstance(body["error"], str)
    assert message in body["error"]
    assert state_of(router) == before


@pytest.mark.parametrize("raw,status,message", NATIVE_CASES)
async def test_openai_chat_errors(router, raw, status, message):
    before = state_of(router)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/v1/chat/completions", data=raw) as r:
            body = await r.json()
            assert r.status == status
    error = body["error"]
    assert message in error["message"]
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    assert error["param"] is None and error["code"] is None
    assert state_of(router) == before


async def test_generate_without_model_is_404_like_ollama(router):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/api/generate", json={"prompt": "x"}) as r:
            assert r.status == 404
            assert await r.json() == {"error": "model '' not found"}


async def test_embed_unknown_model_wording(router):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/api/embed", json={"model": "x", "input": "y"}) as r:
            assert r.status == 404
            assert await r.json() == {"error": 'model "x" not found, try pulling it first'}


async def test_huge_body_is_refused_without_reading_it_all(herd_router):
    router = await herd_router(env={"FLEET_MAX_BODY_MB": "0.01"})
    async with aiohttp.ClientSession() as http:
        body = json.dumps({"model": "m", "prompt": "x" * 50_000})
        async with http.post(f"{router.url}/api/generate", data=body) as r:
            assert r.status == 413
            assert "too large" in (await r.json())["error"]


async def test_unknown_route_and_wrong_method_are_gin_plain_text(router):
    """As Ollama's gin answers them, whichever API the path looks like."""
    async with aiohttp.ClientSession() as http:
        for path in ("/api/nothing", "/v1/nothing"):
            async with http.get(f"{router.url}{path}") as r:
                assert r.status == 404 and await r.text() == "404 page not found"
                assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
        async with http.get(f"{router.url}/api/chat") as r:
            assert r.status == 405 and await r.text() == "405 method not allowed"
            assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
            assert "POST" in r.headers["Allow"]


async def test_model_offline_everywhere_is_503_with_retry_after(router):
    router.services.fleet.nodes["n1"].status = "offline"
    router.services.queues.holding_timeout = 0.2  # held, re-scored, then refused
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/api/chat", json={"model": "llama3.2:3b"}) as r:
            assert r.status == 503
            assert r.headers["Retry-After"] and r.headers["x-should-retry"] == "false"
            assert "n1: offline" in (await r.json())["error"]


async def test_html_node_name_is_stored_as_text(router):
    name = "<script>alert(1)</script>"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/heartbeat", json=heartbeat_payload(name)) as r:
            assert r.status == 200
        async with http.get(f"{router.url}/fleet/status") as r:
            assert r.content_type == "application/json"
            nodes = [n["node_id"] for n in (await r.json())["nodes"]]
    assert name in nodes
