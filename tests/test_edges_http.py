"""HTTP edges as Ollama's gin has them, over real sockets: CORS (OLLAMA_ORIGINS' defaults, the
preflight, headers on every answer, streamed or failed) and /api/version with no nodes."""

from __future__ import annotations

import json

import aiohttp
import attrs
import pytest
from herd_sim import PROFILES, SimFleet

from herd_kernel.cors import ALLOW_HEADERS, ALLOW_METHODS
from herd_kernel.testing import heartbeat_payload, wait_for

MODEL = "llama3.2:3b"


@pytest.fixture
async def sim():
    fleet = SimFleet([attrs.evolve(PROFILES["medium"], name="web", loaded=(MODEL,),
                                   models=(MODEL,))], time_scale=0.02)
    await fleet.start()
    yield fleet
    await fleet.stop()


async def preflight(http, url, origin, path="/api/chat"):
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "content-type"}
    async with http.options(f"{url}{path}", headers=headers) as r:
        return r.status, r.headers, await r.read()


@pytest.mark.parametrize("origin", [
    "http://localhost:3000", "https://127.0.0.1:8443", "http://0.0.0.0", "http://localhost",
    "app://obsidian.md", "tauri://localhost", "vscode-webview://abc", "file://",
])
async def test_a_preflight_from_ollamas_default_origins_is_204(herd_router, origin):
    router = await herd_router()
    async with aiohttp.ClientSession() as http:
        status, headers, body = await preflight(http, router.url, origin)
    assert status == 204 and body == b""  # not the 405 of a POST-only route
    assert headers["Access-Control-Allow-Origin"] == origin
    assert headers["Access-Control-Allow-Methods"] == ALLOW_METHODS
    assert headers["Access-Control-Allow-Headers"] == ALLOW_HEADERS
    assert "X-Stainless-Retry-Count" in headers["Access-Control-Allow-Headers"]
    assert headers["Access-Control-Max-Age"] == "43200"
    assert "Origin" in headers.getall("Vary")


@pytest.mark.parametrize("origin", ["https://evil.example", "http://localhost.evil.example",
                                    "chrome-extension://abcdef"])
async def test_another_origin_gets_403_and_no_cors_headers(herd_router, origin):
    router = await herd_router()
    async with aiohttp.ClientSession() as http:
        status, headers, _ = await preflight(http, router.url, origin)
        assert status == 403
        assert not [h for h in headers if h.lower().startswith("access-control-")]
        async with http.get(f"{router.url}/api/tags", headers={"Origin": origin}) as r:
            assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers


async def test_fleet_origins_adds_to_the_defaults(herd_router):
    router = await herd_router(env={"FLEET_ORIGINS": "https://chat.example, chrome-extension://*"})
    async with aiohttp.ClientSession() as http:
        for origin in ("https://chat.example", "chrome-extension://abcdef",
                       "http://localhost:5173"):
            status, headers, _ = await preflight(http, router.url, origin)
            assert status == 204 and headers["Access-Control-Allow-Origin"] == origin
        assert (await preflight(http, router.url, "https://other.example"))[0] == 403


async def test_same_origin_and_no_origin_pass_untouched(herd_router):
    router = await herd_router()
    async with aiohttp.ClientSession() as http:
        host = router.url.removeprefix("http://")
        async with http.get(f"{router.url}/api/tags", headers={"Origin": f"http://{host}"}) as r:
            assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers
        async with http.options(f"{router.url}/api/chat") as r:  # no Origin: not a preflight
            assert r.status == 405 and await r.text() == "405 method not allowed"


async def test_answers_carry_the_allowed_origin_streamed_or_failed(sim, herd_router, herd_agent):
    router = await herd_router()
    await herd_agent(router.url, sim.nodes["web"].url, "web", interval=0.1)
    await wait_for(lambda: router.services.fleet.nodes.get("web") is not None
                   and router.services.fleet.nodes["web"].available)
    origin = {"Origin": "http://localhost:8080"}
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
            "options": {"num_predict": 6}}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/api/chat", json=chat, headers=origin) as r:
            lines = [json.loads(line) for line in (await r.read()).splitlines() if line]
            assert r.status == 200 and lines[-1]["done"] is True  # streamed NDJSON
            assert r.headers["Access-Control-Allow-Origin"] == "http://localhost:8080"
        async with http.post(f"{router.url}/v1/chat/completions", json={**chat, "stream": True},
                             headers=origin) as r:
            assert r.status == 200 and b"data: [DONE]" in await r.read()
            assert r.headers["Access-Control-Allow-Origin"] == "http://localhost:8080"
        async with http.post(f"{router.url}/api/chat", json={**chat, "model": "nope:1b"},
                             headers=origin) as r:
            assert r.status == 404 and r.headers["Access-Control-Allow-Origin"]
        async with http.get(f"{router.url}/api/nothing", headers=origin) as r:
            assert r.status == 404 and r.headers["Access-Control-Allow-Origin"]
        async with http.get(f"{router.url}/api/tags", headers=origin) as r:
            assert r.status == 200 and "Origin" in r.headers.getall("Vary")


async def test_version_with_no_nodes_is_a_real_ollama_version_then_the_fleets_lowest(
        herd_router):
    router = await herd_router()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{router.url}/api/version") as r:
            spoken = (await r.json())["version"]
        assert spoken != "0.0.0" and spoken.count(".") == 2
        for node, version in (("old", "0.11.4"), ("new", "0.14.2")):
            beat = heartbeat_payload(node, available=[MODEL])
            beat["endpoints"][0]["version"] = version
            async with http.post(f"{router.url}/heartbeat", json=beat) as r:
                assert r.status == 200
        async with http.get(f"{router.url}/api/version") as r:
            assert (await r.json())["version"] == "0.11.4"
        for node in ("old", "new"):  # every node goes away
            gone = {**heartbeat_payload(node), "draining": True}
            del gone["endpoints"]
            async with http.post(f"{router.url}/heartbeat", json=gone) as r:
                assert r.status == 200
        assert all(n.status == "offline" for n in router.services.fleet.nodes.values())
        async with http.get(f"{router.url}/api/version") as r:
            assert (await r.json())["version"] == "0.11.4"  # remembered, not 0.0.0
