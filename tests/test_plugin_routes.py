"""Routes a plugin serves beside the client APIs (``herd_routes``), and who may call them."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from herd_kernel.api import RouteDef
from herd_kernel.hookspecs import hookimpl


class Extras:
    """A plugin with one route of each kind of access."""

    def __init__(self) -> None:
        self.writes: list[dict] = []

    @hookimpl
    def herd_routes(self, services):
        async def hello(request: web.Request) -> web.Response:
            return web.json_response({"nodes": len(services.fleet.nodes)})

        async def write(request: web.Request) -> web.Response:
            _raw, body = await services.read_json(request)
            self.writes.append(body)
            return web.json_response({"ok": True})

        return [
            RouteDef(method="GET", path="/x/public", handler=hello),
            RouteDef(method="GET", path="/x/read", handler=hello, access="read"),
            RouteDef(method="POST", path="/x/write", handler=write, access="write"),
        ]


async def test_a_plugin_serves_its_routes_with_the_access_it_declares(herd_router):
    plugin = Extras()
    router = await herd_router(plugins="backend-ollama", extra=[plugin])
    async with aiohttp.ClientSession() as http:
        async with http.get(router.url + "/x/public") as r:
            assert (r.status, await r.json()) == (200, {"nodes": 0})
        async with http.get(router.url + "/x/read") as r:
            assert r.status == 200  # loopback, no admin key: the owner reads
        # a write needs JSON and no foreign origin, even from this machine
        async with http.post(router.url + "/x/write", data=b"{}") as r:
            assert r.status == 415
        async with http.post(router.url + "/x/write", json={"a": 1},
                             headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 403
        # a browser's cross-site (or same-site, another host) call, even with no Origin
        for site in ("cross-site", "same-site"):
            async with http.post(router.url + "/x/write", json={"a": 1},
                                 headers={"Sec-Fetch-Site": site}) as r:
                assert r.status == 403 and "cross-site" in (await r.json())["error"]
        async with http.post(router.url + "/x/write", json={"a": 0},
                             headers={"Sec-Fetch-Site": "same-origin"}) as r:
            assert r.status == 200
        async with http.post(router.url + "/x/write", json={"a": 1}) as r:
            assert (r.status, await r.json()) == (200, {"ok": True})
    assert plugin.writes == [{"a": 0}, {"a": 1}]


async def test_an_admin_key_guards_read_routes_from_other_callers_too(herd_router):
    router = await herd_router(plugins="backend-ollama", extra=[Extras()],
                               env={"FLEET_ADMIN_KEY": "k" * 24})
    async with aiohttp.ClientSession() as http:
        async with http.get(router.url + "/x/read",
                            headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
        async with http.get(router.url + "/x/read",
                            headers={"Authorization": "Bearer " + "k" * 24}) as r:
            assert r.status == 200
        async with http.get(router.url + "/x/public") as r:
            assert r.status == 200


class Squatter:
    @hookimpl
    def herd_routes(self, services):
        async def nothing(request: web.Request) -> web.Response:
            return web.json_response({})

        return [RouteDef(method="GET", path="/fleet/status", handler=nothing)]


async def test_a_plugin_cannot_take_a_kernel_route(herd_router):
    with pytest.raises(RuntimeError, match="/fleet/status"):
        await herd_router(plugins="backend-ollama", extra=[Squatter()])
