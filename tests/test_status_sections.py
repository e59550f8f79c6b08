"""What the kernel gives a store plugin: sections of /fleet/status and the latency history it seeds
at start-up (``RouterAPI.status_sections``, ``RouterAPI.restore_latency``)."""

import aiohttp

from herd_kernel.hookspecs import hookimpl


class StorePlugin:
    """A plugin as a trace store is one: a section in the status, history restored at start."""

    def __init__(self):
        self.seen = []

    @hookimpl
    def herd_startup(self, services):
        services.restore_latency([("n1", "m:1", 100.0), ("n1", "m:1", 300.0),
                                  ("n2", "q:7b", 50.0)])
        services.status_sections["my_store"] = lambda: {"written": len(self.seen)}
        services.status_sections["broken"] = lambda: 1 / 0
        services.status_sections["fleet"] = lambda: {"replaced": True}

    @hookimpl
    def herd_request_finished(self, trace, services):
        self.seen.append((trace.request_id, services))


async def test_sections_and_restored_latency(herd_router):
    plugin = StorePlugin()
    router = await herd_router(plugins="backend-ollama", extra=[plugin])
    services = router.services
    assert services.latency.samples("n1", "m:1") == 2
    assert services.latency.samples("n2", "q:7b") == 1
    assert services.scorer.expected >= {"n1", "n2"}
    async with aiohttp.ClientSession() as http:
        # a request for a model nobody has is still traced, and handed to the plugin
        async with http.post(f"{router.url}/api/chat", json={"model": "none:1b", "messages": []},
                             headers={"X-Request-Id": "seen-1"}) as r:
            assert r.status in (404, 503)
        async with http.get(f"{router.url}/fleet/status") as r:
            body = await r.json()
    assert plugin.seen == [("seen-1", services)]
    assert body["my_store"] == {"written": 1}
    assert body["broken"] == {"error": "ZeroDivisionError('division by zero')"}
    assert "replaced" not in body["fleet"]  # a section cannot replace the kernel's own
