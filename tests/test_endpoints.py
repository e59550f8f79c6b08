"""The backend seam, end to end: a node reports several endpoints of different kinds, each model
goes to the endpoint that listed it, and the engine of that endpoint's kind (here a third-party
plugin's, a kind the kernel has never heard of) decides what is sent and translates the answer
back into the client's API, streamed and not. An older agent's single-engine fragment still
routes."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from herd_kernel.hookspecs import hookimpl
from herd_kernel.pipeline import Outbound
from herd_kernel.testing import heartbeat_payload, wait_for

OLLAMA_MODEL = "llama3.2:3b"
ECHO_MODEL = "Echo-1"  # the engine's own spelling; clients may write echo-1


class LinesToChat:
    """The echo engine answers NDJSON lines ``{"t": "..."}`` and a last ``{"end": n}``; Ollama
    clients get chat chunks."""

    content_type = "application/x-ndjson"

    def __init__(self, model: str) -> None:
        self.model = model
        self.count = 0

    def _chunk(self, content: str, done: bool) -> bytes:
        body: dict[str, Any] = {"model": self.model, "created_at": "2026-12-01T00:00:00Z",
                                "message": {"role": "assistant", "content": content}, "done": done}
        if done:
            body.update(done_reason="stop", eval_count=self.count, prompt_eval_count=1)
        return json.dumps(body).encode() + b"\n"

    def frame(self, frames: bytes) -> bytes:
        out = b""
        for line in frames.splitlines():
            data = json.loads(line)
            if "t" in data:
                self.count += 1
                out += self._chunk(data["t"], False)
        return out

    def end(self) -> bytes:
        return self._chunk("", True)

    def whole(self, body: bytes, status: int) -> bytes:
        if status >= 400:
            return json.dumps({"error": json.loads(body)["problem"]}).encode()
        words = [json.loads(line)["t"] for line in body.splitlines() if b'"t"' in line]
        self.count = len(words)
        return self._chunk("".join(words), True)


class EchoEngine:
    kind = "echo"

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def refuses(self, route: Any) -> str | None:
        return "the echo engine has no Messages API" if route.path == "/v1/messages" else None

    def outbound(self, route: Any, raw: bytes, body: dict[str, Any], decision: Any) -> Outbound:
        # the engine's own name for the model, as its endpoint listed it
        [name] = [m.name for m in decision.endpoint.models_available]
        words = body["messages"][-1]["content"].split()
        payload = {"model": name, "words": words, "stream": route.stream}
        self.sent.append((decision.endpoint.url, payload))
        return Outbound(body=json.dumps(payload).encode(), path="/echo", dialect="plain",
                        translate=LinesToChat(route.model))

    async def warm(self, endpoint: Any, model: str) -> str | None:
        return None


class EchoBackend:
    name = "echo"
    modalities = ("chat",)

    def __init__(self) -> None:
        self.engine = EchoEngine()

    def routes(self, services: Any) -> list[Any]:
        return []  # it serves no API of its own: the Ollama backend's routes reach it

    async def probe(self, ctx: Any) -> dict[str, Any]:
        return {}


class EchoPlugin:
    def __init__(self) -> None:
        self.backend = EchoBackend()

    @hookimpl
    def herd_backends(self, config: Any) -> list[Any]:
        return [self.backend]


async def echo_server(aiohttp_server: Any) -> Any:
    async def echo(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body["model"] != ECHO_MODEL:
            return web.json_response({"problem": f"no model {body['model']}"}, status=400)
        lines = [json.dumps({"t": w + " "}).encode() + b"\n" for w in body["words"]]
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for line in lines:
            await response.write(line)
        await response.write(b'{"end": true}\n')
        return response

    app = web.Application()
    app.router.add_post("/echo", echo)
    return await aiohttp_server(app)


async def fake_ollama(aiohttp_server: Any) -> Any:
    async def chat(request: web.Request) -> web.Response:
        return web.json_response({
            "model": OLLAMA_MODEL, "created_at": "2026-12-01T00:00:00Z",
            "message": {"role": "assistant", "content": "from ollama"}, "done": True,
            "done_reason": "stop", "eval_count": 2, "prompt_eval_count": 3})

    app = web.Application()
    app.router.add_post("/api/chat", chat)
    return await aiohttp_server(app)


def two_engine_beat(ollama_url: str, echo_url: str) -> dict[str, Any]:
    beat = heartbeat_payload("box", url=ollama_url, loaded=[OLLAMA_MODEL])
    beat["endpoints"].append({"kind": "echo", "url": echo_url, "engine": "echo-server",
                              "models_available": [{"name": ECHO_MODEL}],
                              "models_loaded": [{"name": ECHO_MODEL}]})
    return beat


async def post(url: str, path: str, body: dict[str, Any]) -> tuple[int, Any, bytes]:
    async with aiohttp.ClientSession() as http:
        async with http.post(url + path, json=body) as r:
            return r.status, r.headers, await r.read()


@pytest.fixture
async def fleet(herd_router, aiohttp_server):
    plugin = EchoPlugin()
    router = await herd_router(plugins="backend-ollama", extra=[plugin])
    ollama, echo = await fake_ollama(aiohttp_server), await echo_server(aiohttp_server)
    beat = two_engine_beat(str(ollama.make_url("")).rstrip("/"), str(echo.make_url("")).rstrip("/"))
    status, _h, body = await post(router.url, "/heartbeat", beat)
    assert status == 200, body
    return router, plugin.backend.engine, str(echo.make_url("")).rstrip("/")


@pytest.mark.parametrize("stream", [False, True])
async def test_each_model_goes_to_the_endpoint_that_listed_it(fleet, stream):
    router, engine, echo_url = fleet
    chat = {"messages": [{"role": "user", "content": "one two three"}], "stream": stream}
    status, headers, body = await post(router.url, "/api/chat", {**chat, "model": "echo-1"})
    assert status == 200, body
    assert headers["X-Fleet-Node"] == "box"
    assert headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in body.splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == "one two three "
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 3
    assert engine.sent[-1] == (echo_url, {"model": ECHO_MODEL, "words": ["one", "two", "three"],
                                          "stream": stream})
    trace = router.services.recent_traces[-1]
    assert trace.status == "completed" and trace.completion_tokens == 3
    # the same node's Ollama model still goes to its Ollama
    status, headers, body = await post(router.url, "/api/chat",
                                       {**chat, "stream": False, "model": OLLAMA_MODEL})
    assert status == 200 and json.loads(body)["message"]["content"] == "from ollama"
    assert len(engine.sent) == 1


async def test_an_engine_that_cannot_speak_the_api_is_not_a_candidate(fleet):
    router, engine, _ = fleet
    status, _h, body = await post(router.url, "/v1/messages", {
        "model": "echo-1", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 400
    reply = json.loads(body)
    assert reply["type"] == "error" and "no Messages API" in reply["error"]["message"]
    assert engine.sent == []


async def test_fleet_status_lists_every_endpoint(fleet):
    router, _engine, echo_url = fleet
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{router.url}/fleet/status") as r:
            [node] = (await r.json())["nodes"]
    assert [(e["kind"], e["models_available"]) for e in node["endpoints"]] == [
        ("ollama", [OLLAMA_MODEL]), ("echo", [ECHO_MODEL])]
    assert node["endpoints"][1]["url"] == echo_url and node["endpoints"][1]["engine"] == "echo-server"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{router.url}/api/tags") as r:
            names = {m["name"] for m in (await r.json())["models"]}
    assert names == {OLLAMA_MODEL, ECHO_MODEL}


async def test_without_the_engines_backend_its_models_are_not_routed(herd_router, aiohttp_server):
    router = await herd_router(plugins="backend-ollama")  # no echo backend loaded
    echo = await echo_server(aiohttp_server)
    beat = two_engine_beat("http://127.0.0.1:9", str(echo.make_url("")).rstrip("/"))
    assert (await post(router.url, "/heartbeat", beat))[0] == 200
    status, _h, body = await post(router.url, "/api/chat", {
        "model": ECHO_MODEL, "stream": False, "messages": [{"role": "user", "content": "x"}]})
    assert status == 400 and "no backend for its echo engine" in json.loads(body)["error"]


async def test_an_older_agents_single_engine_fragment_still_routes(herd_router, aiohttp_server):
    router = await herd_router(plugins="backend-ollama")
    ollama = await fake_ollama(aiohttp_server)
    beat = heartbeat_payload("old", loaded=[OLLAMA_MODEL])
    beat["ollama"] = {**beat.pop("endpoints")[0], "url": str(ollama.make_url("")).rstrip("/")}
    del beat["ollama"]["kind"]
    assert (await post(router.url, "/heartbeat", beat))[0] == 200
    status, headers, body = await post(router.url, "/api/chat", {
        "model": OLLAMA_MODEL, "stream": False, "messages": [{"role": "user", "content": "x"}]})
    assert status == 200 and headers["X-Fleet-Node"] == "old"
    # and its mistakes are named in its own terms
    beat["ollama"]["url"] = "ftp://192.0.2.1:11434"
    status, _h, body = await post(router.url, "/heartbeat", beat)
    assert status == 400 and json.loads(body)["field"] == "ollama.url"
    beat["ollama"]["url"] = "http://127.0.0.1:11434"
    beat["ollama"]["models_loaded"] = [{"name": "m", "size_bytes": "big"}]
    status, _h, body = await post(router.url, "/heartbeat", beat)
    assert status == 400 and json.loads(body)["field"] == "ollama.models_loaded[0].size_bytes"


async def test_one_node_routes_to_the_endpoint_on_the_url_it_was_told(fleet):
    """The echo endpoint answers 400 in its own words for a model it does not have: the client's
    mistake, translated into the client's shape, no retry."""
    router, engine, _ = fleet
    # make the engine send a name the echo server does not know
    engine_outbound = engine.outbound

    def wrong(route, raw, body, decision):
        out = engine_outbound(route, raw, body, decision)
        import attrs
        return attrs.evolve(out, body=out.body.replace(ECHO_MODEL.encode(), b"nope"))

    engine.outbound = wrong
    status, headers, body = await post(router.url, "/api/chat", {
        "model": ECHO_MODEL, "stream": False, "messages": [{"role": "user", "content": "x"}]})
    assert status == 400 and json.loads(body) == {"error": "no model nope"}
    assert headers["X-Fleet-Retries"] == "0"
    await wait_for(lambda: router.services.recent_traces[-1].status == "failed")


class StatusWatcher:
    def __init__(self) -> None:
        self.changes: list[tuple[str, str | None, str]] = []

    @hookimpl
    def herd_node_status_changed(self, node_id: str, old: str | None, new: str) -> None:
        self.changes.append((node_id, old, new))


async def test_plugins_hear_every_node_status_change(herd_router, aiohttp_server):
    watcher = StatusWatcher()
    router = await herd_router(plugins="backend-ollama", extra=[watcher])
    ollama = await fake_ollama(aiohttp_server)
    url = str(ollama.make_url("")).rstrip("/")
    assert (await post(router.url, "/heartbeat", heartbeat_payload("n", url=url)))[0] == 200
    assert (await post(router.url, "/heartbeat", heartbeat_payload("n", url=url)))[0] == 200
    gone = {**heartbeat_payload("n", url=url), "draining": True}
    assert (await post(router.url, "/heartbeat", gone))[0] == 200
    assert watcher.changes == [("n", None, "online"), ("n", "online", "offline")]
