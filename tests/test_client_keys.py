"""Client API keys (FLEET_API_KEYS) on a real router: every client route refuses a request
without one, in its API's own error shape; the official clients work with one; a key's app name
tags its traces; the admin views take client keys for reads only; the dashboard login's cookie."""

from __future__ import annotations

import hashlib
import hmac
import re

import aiohttp
import attrs
import ollama
import openai
import pytest
from aiohttp import web
from herd_sim import PROFILES, SimFleet
from structlog.testing import capture_logs

from herd_kernel import hookimpl, keys
from herd_kernel.api import RouteDef
from herd_kernel.app import create_app, serve
from herd_kernel.config import SettingError
from herd_kernel.testing import make_config, make_host, wait_for

MODEL = "llama3.2:3b"
NO_WINDOW = {"FLEET_ENROLL_MINUTES": "0"}


# --- the key table, no server ---------------------------------------------------------------------


def test_keys_parse_from_a_list_and_from_a_file(tmp_path):
    assert keys.parse("") == {}
    assert keys.parse(" k1, k2 ,,k3 app-c") == {"k1": "", "k2": "", "k3": "app-c"}
    path = tmp_path / "keys.txt"
    path.write_text("# the team's keys\nsk-aaa aider\n\n  sk-bbb   open-webui  # the UI\nsk-ccc\n")
    assert keys.parse(str(path)) == {"sk-aaa": "aider", "sk-bbb": "open-webui", "sk-ccc": ""}


@pytest.mark.parametrize("content, error", [
    ("# nothing here\n\n", "holds no keys"),
    ("k1 app extra\n", "at most one app name"),
    ("k1 a\nk1 b\n", "two app names"),
])
def test_a_bad_key_file_stops_the_router(tmp_path, content, error):
    path = tmp_path / "keys.txt"
    path.write_text(content)
    with pytest.raises(SettingError, match=error):
        keys.parse(str(path))
    with pytest.raises(SettingError, match="cannot read"):
        keys.parse(str(tmp_path / "missing.txt"))


def test_keys_are_held_as_keyed_digests_and_found_in_one_lookup(monkeypatch):
    table = keys.Keys({"sk-secret-one": "aider", "sk-secret-two": ""}, admin_key="adm1n")
    held = repr(vars(table))
    assert "sk-secret" not in held and "adm1n" not in held  # no key is kept as it was given
    assert table.client({"Authorization": "Bearer sk-secret-one"}) == "aider"
    assert table.client({"Authorization": "bearer sk-secret-two"}) == ""
    assert table.client({"X-API-Key": "sk-secret-two"}) == ""
    assert table.client({"Authorization": "Bearer sk-wrong", "X-API-Key": "sk-secret-one"}) \
        == "aider"
    assert table.client({"Authorization": "Bearer adm1n"}) is None  # not a client key
    # a guess costs one keyed HMAC and one dict lookup, whether it shares a prefix with a real
    # key or not: no comparison runs along the real key's characters
    calls = []
    real_digest = hmac.digest

    def counting(key, msg, digest):
        calls.append(msg)
        return real_digest(key, msg, digest)

    monkeypatch.setattr(keys.hmac, "digest", counting)
    for guess in ("sk-secret-onf", "x", "sk-secret-one"):
        calls.clear()
        table.client({"Authorization": f"Bearer {guess}"})
        assert calls == [guess.encode()]
    assert keys.hashlib.sha256 is hashlib.sha256


def test_session_tokens_are_signed_expire_and_never_hold_the_key():
    table = keys.Keys({"sk-one": ""}, admin_key="adm1n")
    token = table.session("sk-one", now=1000.0)
    assert token and "sk-one" not in token
    assert table.session_ok(token, now=1000.0 + keys.SESSION_S - 1)
    assert not table.session_ok(token, now=1000.0 + keys.SESSION_S + 1)
    expires, who, mac = token.split(".")
    assert not table.session_ok(f"{int(expires) + 99}.{who}.{mac}", now=1000.0)  # extended
    assert not table.session_ok(f"{expires}.admin.{mac}", now=1000.0)  # promoted
    assert table.session("adm1n", now=1000.0).split(".")[1] == "admin"
    assert table.session("sk-wrong") is None
    # another router process (another secret) does not take it
    assert not keys.Keys({"sk-one": ""}).session_ok(token, now=1000.0)


# --- a real router ---------------------------------------------------------------------------------


@pytest.fixture
async def fleet():
    profile = attrs.evolve(PROFILES["medium"], name="alpha", loaded=(MODEL,), models=(MODEL,),
                           tokens_per_s=2000.0, num_parallel=4)
    sim = SimFleet([profile], time_scale=0.01)
    await sim.start()
    yield sim
    await sim.stop()


class Traces:
    def __init__(self) -> None:
        self.seen = []

    @hookimpl
    def herd_request_finished(self, trace):
        self.seen.append(trace)


async def start(fleet, herd_router, herd_agent, env, extra=()):
    router = await herd_router(env={**NO_WINDOW, **env}, extra=extra)
    for name, node in fleet.nodes.items():
        await herd_agent(router.url, node.url, name)
    await wait_for(lambda: any(n.available for n in router.services.fleet.nodes.values()))
    return router


def shape_of(path: str, body) -> str:
    """Which API's error shape an answer has, asserting it is whole."""
    if path == "/v1/messages":
        assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
        assert isinstance(body["error"]["message"], str)
        return "anthropic"
    if path.startswith("/v1/"):
        assert set(body["error"]) == {"message", "type", "param", "code"}
        return "openai"
    assert isinstance(body["error"], str) and body["error"]
    return "ollama" if path == "/" or path.startswith("/api/") else "plain"


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


async def test_every_client_route_refuses_a_request_without_a_key(herd_router):
    router = await herd_router(env={"FLEET_API_KEYS": "k1", **NO_WINDOW})
    routes = [(r.method, r.resource.canonical, getattr(r.handler, keys.ACCESS, "client"))
              for r in router.app.router.routes()]
    by_access: dict[str, set] = {}
    for method, path, access in routes:
        by_access.setdefault(access, set()).add((method, path))
    # the routes that need no client key are exactly these; any other new route is a client
    # route and must answer 401 below (or be an admin view, which takes its own guard)
    assert by_access["node"] == {("POST", "/heartbeat"), ("GET", "/fleet/hello"),
                                 ("HEAD", "/fleet/hello")}
    assert by_access["login"] == {("GET", "/dashboard/login"), ("HEAD", "/dashboard/login"),
                                  ("POST", "/dashboard/login"), ("POST", "/dashboard/logout")}
    clients = sorted(by_access["client"])
    assert ("POST", "/api/chat") in clients and ("POST", "/v1/messages") in clients
    shapes = set()
    async with aiohttp.ClientSession() as http:
        for method, path in clients:
            url = router.url + concrete(path)
            for headers in ({}, {"Authorization": "Bearer k2"}, {"X-API-Key": "k1x"}):
                async with http.request(method, url, headers=headers, json={}) as r:
                    assert r.status == 401, (method, path, headers, r.status)
                    assert r.headers["WWW-Authenticate"].startswith("Bearer")
                    if method != "HEAD":
                        body = await r.json()
                        shapes.add(shape_of(path, body))
                        text = str(body)
                        assert "k1" not in text and "k2" not in text  # never echoed
                        assert ("invalid" in text) == bool(headers)
            async with http.request(method, url, headers={"Authorization": "Bearer k1"},
                                    json={}) as r:
                assert r.status != 401, (method, path)
        # the admin views: from loopback as before (the owner); the rest further down
        for method, path in sorted(by_access["read"]):
            async with http.request(method, router.url + concrete(path)) as r:
                assert r.status != 401, (method, path)
        # an allowed browser origin's preflight carries no key and still gets its 204
        async with http.options(f"{router.url}/api/chat", headers={
                "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}) as r:
            assert r.status == 204
        async with http.get(f"{router.url}/no/such/path") as r:
            assert r.status == 404
    assert shapes == {"ollama", "openai", "anthropic"}


async def test_the_admin_views_take_client_keys_for_reads_and_the_admin_key_for_writes(
        herd_router):
    router = await herd_router(env={"FLEET_API_KEYS": "k1", "FLEET_ADMIN_KEY": "adm", **NO_WINDOW})
    reads = sorted((r.method, r.resource.canonical) for r in router.app.router.routes()
                   if getattr(r.handler, keys.ACCESS, None) == "read" and r.method == "GET")
    assert ("GET", "/fleet/status") in reads and ("GET", "/dashboard/api/health") in reads
    router.services.admission.is_loopback_peer = lambda peer: False  # from elsewhere
    enroll = f"{router.url}/fleet/enroll"
    async with aiohttp.ClientSession() as http:
        for _method, path in reads:
            url = router.url + concrete(path)
            async with http.get(url) as r:
                assert r.status == 401, path
            for key in ("k1", "adm"):
                async with http.get(url, headers={"Authorization": f"Bearer {key}"}) as r:
                    assert r.status == 200, (path, key)
            async with http.get(url, headers={"X-API-Key": "nope"}) as r:
                assert r.status == 401 and "wrong key" in (await r.json())["error"]
        async with http.post(enroll, json={"minutes": 0}, headers={"X-API-Key": "k1"}) as r:
            assert r.status == 401 and "admin key" in (await r.json())["error"]
        async with http.post(enroll, json={"minutes": 0}, headers={"X-API-Key": "adm"}) as r:
            assert r.status == 200
        # the admin key is not a client key
        async with http.post(f"{router.url}/api/chat", json={"model": MODEL},
                             headers={"X-API-Key": "adm"}) as r:
            assert r.status == 401
    router.services.admission.is_loopback_peer = lambda peer: True  # the owner, no key at all
    async with aiohttp.ClientSession() as http:
        async with http.post(enroll, json={"minutes": 0}) as r:
            assert r.status == 200
        async with http.post(f"{router.url}/api/chat", json={"model": MODEL}) as r:
            assert r.status == 401  # client routes need a key from this machine too


async def test_client_routes_are_open_while_no_keys_are_set(herd_router):
    router = await herd_router(env=NO_WINDOW)
    assert not router.services.keys.required
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{router.url}/api/tags") as r:
            assert r.status == 200
        async with http.get(f"{router.url}/v1/models", headers={"Authorization": "Bearer x"}) as r:
            assert r.status == 200  # a key sent to a router without keys is ignored


async def test_the_official_clients_work_with_the_key(fleet, herd_router, herd_agent):
    router = await start(fleet, herd_router, herd_agent, {"FLEET_API_KEYS": "k1"})
    messages = [{"role": "user", "content": "hi"}]
    async with ollama.AsyncClient(host=router.url, headers={"Authorization": "Bearer k1"}) as c:
        reply = await c.chat(MODEL, messages=messages, options={"num_predict": 4})
        assert reply.message.content
        assert [m.model for m in (await c.list()).models] == [MODEL]
    async with ollama.AsyncClient(host=router.url) as c:
        with pytest.raises(ollama.ResponseError) as refused:
            await c.chat(MODEL, messages=messages)
        assert refused.value.status_code == 401 and "API key" in refused.value.error
    good = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="k1", max_retries=0)
    bad = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="k2", max_retries=0)
    try:
        answer = await good.chat.completions.create(model=MODEL, messages=messages,
                                                    max_tokens=4)
        assert answer.choices[0].message.content
        chunks = [c async for c in await good.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=4, stream=True)]
        assert chunks
        with pytest.raises(openai.AuthenticationError) as refused:
            await bad.chat.completions.create(model=MODEL, messages=messages)
        assert refused.value.status_code == 401
        assert refused.value.body["type"] == "authentication_error"
    finally:
        await good.close()
        await bad.close()


async def test_a_keys_app_name_tags_its_requests(fleet, herd_router, herd_agent, tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text("sk-aider aider\nsk-plain\n")
    traces = Traces()
    router = await start(fleet, herd_router, herd_agent, {"FLEET_API_KEYS": str(path)},
                         extra=[traces])
    body = {"model": MODEL, "stream": False, "messages": [{"role": "user", "content": "hi"}],
            "options": {"num_predict": 2}}
    sent = [
        ({"Authorization": "Bearer sk-aider"}, ("aider",)),
        ({"X-API-Key": "sk-aider", "X-Herd-Tags": "nightly"}, ("aider", "nightly")),
        ({"X-API-Key": "sk-aider", "X-App-Tag": "mine"}, ("mine",)),  # the request's own wins
        ({"X-API-Key": "sk-plain"}, ()),
    ]
    async with aiohttp.ClientSession() as http:
        for headers, _tags in sent:
            async with http.post(f"{router.url}/api/chat", json=body, headers=headers) as r:
                assert r.status == 200, await r.text()
    await wait_for(lambda: len(traces.seen) == len(sent))
    assert [t.tags for t in traces.seen] == [tags for _h, tags in sent]


def cookie_from(response) -> tuple[str, str]:
    header = response.headers["Set-Cookie"]
    value = header.split(";", 1)[0].split("=", 1)[1]
    return value, header


class DashboardPage:
    """A plugin's public page under /dashboard, as the dashboard issue will add one."""

    @hookimpl
    def herd_routes(self, services):
        async def page(request):
            return web.Response(text="<h1>fleet</h1>", content_type="text/html")

        return [RouteDef(method="GET", path="/dashboard/page", handler=page)]


async def test_dashboard_login_sets_a_session_cookie_for_dashboard_reads(herd_router):
    router = await herd_router(env={"FLEET_API_KEYS": "sk-dash", **NO_WINDOW},
                               extra=[DashboardPage()])
    router.services.admission.is_loopback_peer = lambda peer: False  # from elsewhere
    health = f"{router.url}/dashboard/api/health"
    login = f"{router.url}/dashboard/login"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.get(login) as r:
            page = await r.text()
            assert r.status == 200 and r.content_type == "text/html"
            assert "<script" not in page and "style=" not in page
            assert '<label for="key">' in page and 'id="key"' in page and 'lang="en"' in page
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]
        async with http.post(login, json={"key": "wrong"}) as r:
            assert r.status == 401 and "Set-Cookie" not in r.headers
        async with http.post(login, data={"key": "wrong"}) as r:
            assert r.status == 401 and "not valid" in await r.text()
        async with http.post(login, json={"key": "sk-dash"},
                             headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 403 and "Set-Cookie" not in r.headers
        async with http.post(login, json={"key": "sk-dash"}) as r:
            assert r.status == 200
            token, header = cookie_from(r)
        assert "sk-dash" not in header
        assert "HttpOnly" in header and "SameSite=Strict" in header and "Path=/" in header
        async with http.post(login, data={"key": "sk-dash"}, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/dashboard"
            assert cookie_from(r)[0]
        cookie = {"Cookie": f"{keys.COOKIE}={token}"}
        async with http.get(health) as r:
            assert r.status == 401
        # a plugin's public page: a browser without a session goes to the login form
        page = f"{router.url}/dashboard/page"
        async with http.get(page, headers={"Accept": "text/html"}, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/dashboard/login"
        async with http.get(page) as r:
            assert r.status == 401
        async with http.get(page, headers=cookie) as r:
            assert r.status == 200 and "fleet" in await r.text()
        async with http.get(health, headers=cookie) as r:
            assert r.status == 200 and "score" in await r.json()
        async with http.get(health, headers={"Cookie": f"{keys.COOKIE}={token[:-2]}00"}) as r:
            assert r.status == 401
        # a session reads; it never writes, and it is not a key for the client API
        async with http.post(f"{router.url}/fleet/enroll", json={"minutes": 0},
                             headers=cookie) as r:
            assert r.status == 403
        async with http.post(f"{router.url}/api/chat", json={"model": MODEL},
                             headers=cookie) as r:
            assert r.status == 401
        async with http.post(f"{router.url}/dashboard/logout") as r:
            assert r.status == 200 and f"{keys.COOKIE}=" in r.headers["Set-Cookie"]


async def test_a_router_on_the_network_without_keys_warns_at_start(tmp_path):
    for env, warned in (({}, True), ({"FLEET_API_KEYS": "k1"}, False)):
        host = make_host("backend-ollama")
        config = make_config(host, {"FLEET_DATA_DIR": str(tmp_path), **env})
        app = create_app(config, host)
        with capture_logs() as logs:
            runner, _site = await serve(app, "0.0.0.0", 0)
        await runner.cleanup()
        assert any("no client API keys" in line["event"] for line in logs) is warned
    host = make_host("backend-ollama")
    app = create_app(make_config(host, {"FLEET_DATA_DIR": str(tmp_path)}), host)
    with capture_logs() as logs:
        runner, _site = await serve(app, "127.0.0.1", 0)
    await runner.cleanup()
    assert not any("no client API keys" in line["event"] for line in logs)
