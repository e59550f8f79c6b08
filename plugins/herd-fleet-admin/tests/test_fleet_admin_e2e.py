"""The settings and model-management APIs over real sockets: a real router with every installed
plugin, real node agents, simulated Ollama machines, the runtime settings file on disk."""

from __future__ import annotations

import asyncio
import json
import stat
import time

import aiohttp
from herd_sim.testing import chat, herd_over, post, profile
from structlog.testing import capture_logs

from herd_kernel import __version__
from herd_kernel.testing import wait_for

SETTINGS = "/dashboard/api/settings"
MODELS = "/dashboard/api/model-management"
SECRET = "fleet-secret-that-must-never-show"
ADMIN_KEY = "admin-key-that-must-never-show-1234"


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers=headers) as r:
            return r.status, await r.json()


async def post_settings(url: str, data: bytes | str, headers: dict[str, str] | None = None
                        ) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **(headers or {})}
    async with aiohttp.ClientSession() as http:
        async with http.post(url + SETTINGS, data=data, headers=headers) as r:
            return r.status, await r.json(content_type=None)


async def test_get_settings_shows_what_is_in_force_and_never_a_secret(sims, herd_router,
                                                                       herd_agent):
    fleet = await sims(profile("solo", ["llama3.2:3b"], loaded=["llama3.2:3b"]))
    router = await herd_router(env={
        "FLEET_SECRET": SECRET, "FLEET_ADMIN_KEY": ADMIN_KEY, "FLEET_VRAM_FALLBACK": "1"})
    await herd_agent(router.url, fleet.nodes["solo"].url, "solo", interval=0.1,
                     env={"FLEET_NODE_SECRET": SECRET})
    await wait_for(lambda: "solo" in router.services.fleet.nodes)
    async with aiohttp.ClientSession() as http:
        async with http.get(router.url + SETTINGS) as r:  # loopback: the owner reads
            assert r.status == 200
            text = await r.text()
    assert SECRET not in text and ADMIN_KEY not in text
    body = json.loads(text)
    by_env = {s["env"]: s for s in body["settings"]}
    assert by_env["FLEET_AUTO_PULL"] == {
        "name": "auto_pull", "env": "FLEET_AUTO_PULL", "value": False, "default": False,
        "source": "default", "runtime": True, "type": "bool", "scope": "router",
        "help": by_env["FLEET_AUTO_PULL"]["help"], "plugin": "shaper-auto-pull"}
    assert by_env["FLEET_VRAM_FALLBACK"]["source"] == "env"
    assert by_env["FLEET_VRAM_FALLBACK"]["value"] is True
    assert by_env["FLEET_PORT"]["plugin"] == "kernel" and not by_env["FLEET_PORT"]["runtime"]
    assert by_env["FLEET_CONTEXT_PROTECTION"]["choices"] == ["strip", "warn", "passthrough"]
    for env in ("FLEET_SECRET", "FLEET_ADMIN_KEY"):
        assert by_env[env]["value"] is None and by_env[env]["set"] is True
        assert by_env[env]["secret"] is True
    assert by_env["FLEET_NODE_SECRET"]["set"] is True  # falls back to FLEET_SECRET
    assert body["toggles"]["auto_pull"] is False and body["toggles"]["vram_fallback"] is True
    assert body["toggles"]["context_protection"] == "strip"
    assert "port" not in body["toggles"] and "secret" not in body["toggles"]
    [node] = body["nodes"]
    assert node["node_id"] == "solo" and node["agent_version"] == __version__
    [engine] = node["engines"]
    assert engine["kind"] == "ollama" and engine["version"]
    assert body["router_version"] == __version__


async def test_a_toggle_flips_auto_pull_at_once_and_survives_a_restart(sims, herd_router,
                                                                       herd_agent, tmp_path):
    fleet = await sims(profile("solo", ["llama3.2:3b"], loaded=["llama3.2:3b"]))
    router = await herd_over(fleet, herd_router, herd_agent, env={"FLEET_AUTO_PULL": "true"})
    status, headers, _ = await post(router.url, "/api/chat", chat("qwen3:8b",
                                                                  options={"num_predict": 4}))
    assert status == 200 and headers["X-Fleet-Auto-Pull"] == "solo"  # on: pulled, then served

    status, answer = await post_settings(router.url, '{"auto_pull": false}')
    assert status == 200
    assert answer["toggles"]["auto_pull"] is False
    assert answer["changed"] == [{"name": "auto_pull", "env": "FLEET_AUTO_PULL", "old": True,
                                  "new": False, "source": "runtime"}]
    [event] = [e for e in router.services.events if e["kind"] == "setting_changed"]
    assert (event["setting"], event["old"], event["new"]) == ("FLEET_AUTO_PULL", True, False)

    status, headers, payload = await post(router.url, "/api/chat", chat("qwen2.5:7b"))
    assert status == 404 and "X-Fleet-Auto-Pull" not in headers  # off: not found, no pull
    assert "not found" in payload["error"]
    assert "qwen2.5:7b" not in {name for name, _ctx, _ in fleet.nodes["solo"].loaded_models()}

    saved = tmp_path / "router" / "settings.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert json.loads(saved.read_text())["settings"] == {"FLEET_AUTO_PULL": False}

    # the same data dir, the environment still says true: the runtime value wins, and says so
    await router.runner.cleanup()
    with capture_logs() as logs:
        again = await herd_over(fleet, herd_router, herd_agent, env={"FLEET_AUTO_PULL": "true"})
    assert any(e["event"].startswith("runtime setting in force") and
               e["setting"] == "FLEET_AUTO_PULL" and e["configured"] is True for e in logs)
    status, body = await get(again.url + SETTINGS)
    [auto_pull] = [s for s in body["settings"] if s["env"] == "FLEET_AUTO_PULL"]
    assert (auto_pull["value"], auto_pull["source"], auto_pull["configured"]) == \
        (False, "runtime", True)
    status, headers, _ = await post(again.url, "/api/chat", chat("qwen2.5:7b"))
    assert status == 404 and "X-Fleet-Auto-Pull" not in headers

    # null gives the configured value back, and the file forgets it
    status, answer = await post_settings(again.url, '{"FLEET_AUTO_PULL": null}')
    assert status == 200 and answer["toggles"]["auto_pull"] is True
    assert answer["changed"][0]["source"] == "env"
    assert json.loads(saved.read_text())["settings"] == {}
    status, headers, _ = await post(again.url, "/api/chat", chat("qwen2.5:7b",
                                                                 options={"num_predict": 4}))
    assert status == 200 and headers["X-Fleet-Auto-Pull"] == "solo"


async def test_bad_posts_are_clear_json_errors_and_change_nothing(herd_router, tmp_path):
    router = await herd_router(plugins="backend-ollama,shaper-*,fleet-admin")
    cases = [
        ('{"no_such_thing": 1}', "no_such_thing", "no such setting"),
        ('{"port": 8080}', "port", "cannot be changed while the router runs"),
        ('{"auto_pull": 3}', "auto_pull", "must be true or false"),
        ('{"auto_pull": "banana"}', "auto_pull", "not a valid bool"),
        ('{"thinking_min_predict": 1.5}', "thinking_min_predict", "must be an integer"),
        ('{"context_protection": "sometimes"}', "context_protection", "expected one of"),
        # one bad name stops the whole call: auto_pull is not changed either
        ('{"auto_pull": true, "secret": "x"}', "secret", "cannot be changed"),
        ('{"FLEET_AUTO_PULL": 2}', "FLEET_AUTO_PULL", "FLEET_AUTO_PULL must be true or false"),
    ]
    for data, field, words in cases:
        status, body = await post_settings(router.url, data)
        assert status == 400, data
        assert body["field"] == field and words in body["error"], body
    for data in ("{}", "[]", '{"auto_pull": tru', ""):
        status, body = await post_settings(router.url, data)
        assert status == 400 and body["error"], data
    status, body = await get(router.url + SETTINGS)
    assert body["toggles"]["auto_pull"] is False
    assert not (tmp_path / "router" / "settings.json").exists()
    assert not [e for e in router.services.events if e["kind"] == "setting_changed"]

    # strings are read as the environment would read them
    status, body = await post_settings(router.url, '{"auto_pull": "yes", '
                                                   '"FLEET_THINKING_OVERHEAD": 2}')
    assert status == 200 and body["toggles"]["auto_pull"] is True
    assert body["toggles"]["thinking_overhead"] == 2.0


async def test_only_json_from_the_same_site_may_change_a_setting(herd_router):
    router = await herd_router(plugins="backend-ollama,shaper-auto-pull,fleet-admin")
    status, body = await post_settings(router.url, '{"auto_pull": true}',
                                       {"Content-Type": "text/plain"})
    assert status == 415 and "application/json" in body["error"]
    status, body = await post_settings(router.url, "auto_pull=true",
                                       {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415
    status, body = await post_settings(router.url, '{"auto_pull": true}',
                                       {"Origin": "http://evil.example"})
    assert status == 403  # refused before routing (an origin no browser page may call from)
    # a page on this machine passes CORS (Ollama's defaults allow localhost) but not the guard
    status, body = await post_settings(router.url, '{"auto_pull": true}',
                                       {"Origin": "http://localhost:3000"})
    assert status == 403 and "cross-origin" in body["error"]
    status, body = await post_settings(router.url, '{"auto_pull": true}',
                                       {"Sec-Fetch-Site": "cross-site"})
    assert status == 403 and "cross-site" in body["error"]
    assert router.services.config["FLEET_AUTO_PULL"] is False
    # the same origin, as the dashboard itself sends it
    host = router.url.removeprefix("http://")
    status, body = await post_settings(router.url, '{"auto_pull": true}',
                                       {"Origin": router.url, "Sec-Fetch-Site": "same-origin",
                                        "Host": host})
    assert status == 200 and body["toggles"]["auto_pull"] is True


async def test_the_admin_key_is_needed_from_other_machines(herd_router):
    router = await herd_router(plugins="backend-ollama,shaper-auto-pull,fleet-admin",
                               env={"FLEET_ADMIN_KEY": ADMIN_KEY})
    router.services.admission.is_loopback_peer = lambda peer: False  # as if from elsewhere
    for path in (SETTINGS, MODELS):
        status, body = await get(router.url + path)
        assert status == 401 and "admin key" in body["error"]
        status, _ = await get(router.url + path, {"Authorization": f"Bearer {ADMIN_KEY}"})
        assert status == 200
    status, body = await post_settings(router.url, '{"auto_pull": true}')
    assert status == 401
    status, body = await post_settings(router.url, '{"auto_pull": true}',
                                       {"X-API-Key": ADMIN_KEY})
    assert status == 200 and body["toggles"]["auto_pull"] is True


async def test_without_an_admin_key_other_machines_may_read_but_never_write(herd_router):
    router = await herd_router(plugins="backend-ollama,shaper-auto-pull,fleet-admin")
    router.services.admission.is_loopback_peer = lambda peer: False
    status, _ = await get(router.url + SETTINGS)
    assert status == 200
    status, body = await post_settings(router.url, '{"auto_pull": true}')
    assert status == 403 and "loopback" in body["error"]
    assert router.services.config["FLEET_AUTO_PULL"] is False


async def test_model_management_lists_each_nodes_models_and_when_they_were_used(
        sims, herd_router, herd_agent):
    fleet = await sims(profile("one", ["llama3.2:3b", "qwen2.5:7b"], loaded=["llama3.2:3b"]),
                       profile("two", ["llama3.2:1b"]))
    router = await herd_over(fleet, herd_router, herd_agent)
    await wait_for(lambda: all(n.available for n in router.services.fleet.nodes.values()))
    status, body = await get(router.url + MODELS)
    assert status == 200
    nodes = {n["node_id"]: n for n in body["nodes"]}
    assert set(nodes) == {"one", "two"}
    one = nodes["one"]
    assert one["status"] == "online" and one["memory"]["total_gb"] > 0
    assert one["models_loaded"] == 1
    models = {m["name"]: m for m in one["models"]}
    assert set(models) == {"llama3.2:3b", "qwen2.5:7b"}
    hot, cold = models["llama3.2:3b"], models["qwen2.5:7b"]
    assert hot["loaded"] is True and hot["kind"] == "ollama"
    assert hot["context_length"] > 0 and hot["size_vram_gb"] > 0 and hot["size_gb"] > 0
    assert cold["loaded"] is False and cold["size_gb"] > 0 and "context_length" not in cold
    assert hot["last_used"] is None and hot["requests_completed"] == 0

    before = time.time()
    status, headers, _ = await post(router.url, "/api/chat", chat("llama3.2:3b",
                                                                  options={"num_predict": 4}))
    assert status == 200 and headers["X-Fleet-Node"] == "one"
    status, body = await get(router.url + MODELS)
    one = {n["node_id"]: n for n in body["nodes"]}["one"]
    hot = {m["name"]: m for m in one["models"]}["llama3.2:3b"]
    assert before <= hot["last_used"] <= time.time()
    assert hot["requests_completed"] == 1 and hot["requests_active"] == 0
    two = {n["node_id"]: n for n in body["nodes"]}["two"]
    assert all(m["last_used"] is None for m in two["models"])


async def test_the_fleet_skill_commands_work_as_written(sims, herd_router, herd_agent):
    fleet = await sims(profile("solo", ["llama3.2:3b"], loaded=["llama3.2:3b"]))
    router = await herd_over(fleet, herd_router, herd_agent)
    commands = [
        "curl -s http://localhost:11435/dashboard/api/settings",
        "curl -s -X POST http://localhost:11435/dashboard/api/settings -H \"Content-Type: "
        "application/json\" -d '{\"auto_pull\": false}'",
        "curl -s http://localhost:11435/dashboard/api/model-management",
    ]
    port = router.url.rsplit(":", 1)[1]
    answers = []
    for command in commands:
        process = await asyncio.create_subprocess_shell(
            command.replace("localhost:11435", f"localhost:{port}"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await process.communicate()
        assert process.returncode == 0, err
        answers.append(json.loads(out))
    assert answers[0]["toggles"]["auto_pull"] is False and answers[0]["nodes"]
    assert answers[1]["toggles"]["auto_pull"] is False and answers[1]["changed"]
    assert answers[2]["nodes"][0]["models"][0]["name"] == "llama3.2:3b"
