"""Admission over real sockets: who may be a node. Agents on the router's machine join at once; a
node elsewhere waits, gets no traffic, is admitted by the owner (the real `herd nodes` command
against the running router) or an enrollment window, and is then pinned to its own key.

Every test runs on loopback, so "elsewhere" is the router's test seam: ``admission.is_local``
says whether a heartbeat came from this machine. Where simulated nodes on loopback must pass for
machines elsewhere, ``admission.is_own_loopback`` is told so too (a real remote node never serves
on the router's loopback).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat

import aiohttp
import attrs
import pytest
from herd_sim import PROFILES

from herd_kernel import auth
from herd_kernel.admission import NODE_KEY_HEADER, NODE_SIGNATURE_HEADER, fingerprint
from herd_kernel.cli import herd_main
from herd_kernel.testing import heartbeat_payload, wait_for

MODEL = "llama3.2:3b"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False,
        "options": {"num_predict": 4}}
KEY_A = "a" * 64
KEY_B = "b" * 64
NO_WINDOW = {"FLEET_ENROLL_MINUTES": "0"}


def remote(router, *, sims_are_remote: bool = False):
    """Make the router see every heartbeat as coming from another machine."""
    router.services.admission.is_local = lambda peer, sockname: False
    if sims_are_remote:
        router.services.admission.is_own_loopback = lambda address: False
    return router


async def post(router, payload, headers=None, raw=None):
    body = raw if raw is not None else json.dumps(payload).encode()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/heartbeat", data=body,
                             headers={"Content-Type": "application/json", **(headers or {})}) as r:
            return r.status, await r.json()


def signed(key: str, payload, *, present: bool = False, now: float | None = None):
    body = json.dumps(payload).encode()
    headers = {NODE_SIGNATURE_HEADER: auth.sign(key, "POST", "/heartbeat", body, now=now)}
    if present:
        headers[NODE_KEY_HEADER] = key
    return body, headers


async def cli(*argv: str) -> int:
    """The real `herd` command line, in a thread: it makes blocking calls to this loop's router."""
    return await asyncio.to_thread(herd_main, list(argv))


@pytest.fixture
def sims(sim_fleet):
    def start(*names: str):
        return sim_fleet(*(attrs.evolve(PROFILES["medium"], name=name, loaded=(MODEL,),
                                        models=(MODEL,)) for name in names), time_scale=0.01)

    return start


# --- this machine, and the default: pending ------------------------------------------------------


async def test_an_agent_on_this_machine_joins_with_no_configuration(herd_router, herd_agent):
    router = await herd_router(plugins="backend-ollama", env=NO_WINDOW)
    agent = await herd_agent(router.url, "http://127.0.0.1:9", "here", plugins="backend-ollama")
    state = router.services.fleet.nodes["here"]
    assert state.admission == "local" and state.routable
    assert agent.key_pinned  # told it is in, it stops presenting its key
    assert router.services.fleet.pending == {}


async def test_a_node_elsewhere_is_pending_gets_no_traffic_and_joins_once_approved(
    herd_router, herd_agent, sims, capsys
):
    fleet = await sims("sim-a", "sim-b")
    router = remote(await herd_router(plugins="backend-ollama", env=NO_WINDOW),
                    sims_are_remote=True)
    a = await herd_agent(router.url, fleet.nodes["sim-a"].url, "sim-a", plugins="backend-ollama")
    b = await herd_agent(router.url, fleet.nodes["sim-b"].url, "sim-b", plugins="backend-ollama")
    registry = router.services.fleet
    assert registry.nodes == {} and set(registry.pending) == {"sim-a", "sim-b"}
    assert a.last_status == "pending" and not a.key_pinned

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{router.url}/fleet/status") as r:
            listed = {n["node_id"]: n for n in (await r.json())["nodes"]}
        assert listed["sim-a"]["status"] == "pending"
        assert listed["sim-a"]["key_fingerprint"] == fingerprint(a.key)
        async with http.get(f"{router.url}/api/tags") as r:
            assert (await r.json())["models"] == []
        async with http.post(f"{router.url}/api/chat", json=CHAT) as r:
            # as far as routing knows, nobody has the model; in the router's first seconds, with
            # no admitted node reporting yet, that is "still reporting", not a final 404
            assert r.status == 503 and "fleet still reporting" in (await r.json())["error"]

        # the owner lists the nodes and admits one, with the real command line
        capsys.readouterr()
        assert await cli("nodes", "--router", router.url) == 0
        table = capsys.readouterr().out
        assert "sim-a" in table and "pending" in table and fingerprint(a.key) in table
        assert await cli("nodes", "--router", router.url, "approve", "sim-a",
                         "--fingerprint", fingerprint(a.key)) == 0
        assert "sim-a admitted" in capsys.readouterr().out
        await wait_for(lambda: "sim-a" in registry.nodes and registry.nodes["sim-a"].available)
        assert registry.nodes["sim-a"].admission == "admitted"
        await wait_for(lambda: a.key_pinned)

        for _ in range(4):
            async with http.post(f"{router.url}/api/chat", json=CHAT) as r:
                assert r.status == 200 and r.headers["X-Fleet-Node"] == "sim-a"
        async with http.get(f"{router.url}/api/tags") as r:
            assert [m["name"] for m in (await r.json())["models"]] == [MODEL]
    assert fleet.nodes["sim-a"].stats["requests"].get("/api/chat", 0) == 4
    assert fleet.nodes["sim-b"].stats["requests"].get("/api/chat", 0) == 0
    assert "sim-b" in registry.pending and "sim-b" not in registry.nodes and b.key_pinned is False

    # the admission survives a restart: it is on disk, owner-readable only
    book = router.services.admission.path
    assert stat.S_IMODE(os.stat(book).st_mode) == 0o600
    assert json.loads(book.read_text())["nodes"]["sim-a"]["key"] == a.key


async def test_approving_with_the_wrong_fingerprint_admits_nothing(herd_router):
    router = remote(await herd_router(env=NO_WINDOW))
    body, headers = signed(KEY_A, heartbeat_payload("n1", url="http://192.0.2.10:11434"),
                           present=True)
    status, reply = await post(router, None, headers, raw=body)
    assert status == 202 and reply["admission"] == "pending"
    assert await cli("nodes", "--router", router.url, "approve", "n1",
                     "--fingerprint", fingerprint(KEY_B)) == 1
    assert await cli("nodes", "--router", router.url, "approve", "nobody") == 1
    assert router.services.admission.records == {} and "n1" in router.services.fleet.pending


async def test_an_admitted_node_is_pinned_to_its_key(herd_router):
    router = remote(await herd_router(env=NO_WINDOW))
    hb = heartbeat_payload("n1", url="http://192.0.2.10:11434", loaded=[MODEL])
    body, headers = signed(KEY_A, hb, present=True)
    assert (await post(router, None, headers, raw=body))[0] == 202
    # while pending, a second device cannot swap its own key in under the same name
    body, headers = signed(KEY_B, hb, present=True)
    status, reply = await post(router, None, headers, raw=body)
    assert status == 409 and "another key" in reply["error"]
    assert await cli("nodes", "--router", router.url, "approve", "n1") == 0

    registry = router.services.fleet
    for key, present in ((KEY_B, True), (KEY_B, False)):  # another device's key, however sent
        body, headers = signed(key, hb, present=present)
        status, reply = await post(router, None, headers, raw=body)
        assert status == 401 and fingerprint(KEY_A) in reply["error"]
    status, reply = await post(router, hb)  # unsigned
    assert status == 401 and "not signed" in reply["error"]
    assert "n1" not in registry.nodes
    body, headers = signed(KEY_A, hb)
    status, reply = await post(router, None, headers, raw=body)
    assert status == 200 and reply["admission"] == "admitted"
    assert registry.nodes["n1"].loaded
    status, reply = await post(router, None, headers, raw=body)  # the same one again
    assert status == 401 and "replay" in reply["error"]

    # revoked, it is a stranger again: its next heartbeat (with its key) makes it pending
    assert await cli("nodes", "--router", router.url, "remove", "n1") == 0
    assert "n1" not in registry.nodes and router.services.admission.records == {}
    body, headers = signed(KEY_A, hb, present=True)
    assert (await post(router, None, headers, raw=body))[0] == 202


async def test_an_agent_without_its_key_is_refused_from_elsewhere(herd_router):
    router = remote(await herd_router(env=NO_WINDOW))
    status, reply = await post(router, heartbeat_payload("n1", url="http://192.0.2.10:11434"))
    assert status == 401 and NODE_KEY_HEADER in reply["error"]
    assert router.services.fleet.pending == {} and router.services.fleet.nodes == {}


# --- enrollment window --------------------------------------------------------------------------


async def test_first_start_opens_an_enrollment_window_and_herd_enroll_opens_another(
    herd_router, tmp_path, capsys
):
    data = str(tmp_path / "book")
    first = remote(await herd_router(env={"FLEET_DATA_DIR": data}))
    assert "enrollment window open until" in capsys.readouterr().err
    body, headers = signed(KEY_A, heartbeat_payload("early", url="http://192.0.2.10:11434"),
                           present=True)
    status, reply = await post(first, None, headers, raw=body)
    assert status == 200 and reply["admission"] == "admitted"
    assert first.services.admission.records["early"].via == "enrollment"

    # the book exists now: a second start opens no window, a new node waits
    second = remote(await herd_router(env={"FLEET_DATA_DIR": data}))
    assert "enrollment window" not in capsys.readouterr().err
    assert "early" in second.services.admission.records
    body, headers = signed(KEY_B, heartbeat_payload("late", url="http://192.0.2.11:11434"),
                           present=True)
    assert (await post(second, None, headers, raw=body))[0] == 202

    assert await cli("enroll", "--router", second.url, "--minutes", "5") == 0
    out = capsys.readouterr()
    assert "enrollment window open until" in out.out and "enrollment window open" in out.err
    body, headers = signed(KEY_B, heartbeat_payload("late", url="http://192.0.2.11:11434"),
                           present=True)
    status, reply = await post(second, None, headers, raw=body)
    assert status == 200 and reply["admission"] == "admitted"
    assert "late" in second.services.fleet.nodes and "late" not in second.services.fleet.pending


# --- replays from before a restart --------------------------------------------------------------


async def test_a_heartbeat_signed_before_the_router_started_is_refused(herd_router, tmp_path):
    data = str(tmp_path / "restart")
    env = {"FLEET_DATA_DIR": data, "FLEET_SECRET": "s3cret", **NO_WINDOW}
    hb = heartbeat_payload("n1")
    body = json.dumps(hb).encode()
    before = await herd_router(env=env)
    # signed once the first router runs: one signed a moment before its start is refused too
    captured = {auth.HEADER: auth.sign("s3cret", "POST", "/heartbeat", body)}
    assert (await post(before, None, captured, raw=body))[0] == 200
    await before.runner.cleanup()
    await asyncio.sleep(1.05)  # the next second: signatures carry whole seconds

    after = await herd_router(env=env)
    status, reply = await post(after, None, captured, raw=body)
    assert status == 401 and "before this router started" in reply["error"]
    fresh = {auth.HEADER: auth.sign("s3cret", "POST", "/heartbeat", body)}
    assert (await post(after, None, fresh, raw=body))[0] == 200


async def test_a_node_key_signature_from_before_a_restart_is_refused(herd_router, tmp_path):
    env = {"FLEET_DATA_DIR": str(tmp_path / "restart"), **NO_WINDOW}
    hb = heartbeat_payload("n1", url="http://192.0.2.10:11434")
    before = remote(await herd_router(env=env))
    body, headers = signed(KEY_A, hb, present=True)
    assert (await post(before, None, headers, raw=body))[0] == 202
    assert await cli("nodes", "--router", before.url, "approve", "n1") == 0
    captured_body, captured = signed(KEY_A, hb)
    assert (await post(before, None, captured, raw=captured_body))[0] == 200
    await before.runner.cleanup()
    await asyncio.sleep(1.05)

    after = remote(await herd_router(env=env))
    status, reply = await post(after, None, captured, raw=captured_body)
    assert status == 401 and "before this router started" in reply["error"]
    body, headers = signed(KEY_A, hb)  # the pinned key came back from disk
    status, reply = await post(after, None, headers, raw=body)
    assert status == 200 and reply["admission"] == "admitted"


# --- node URLs ----------------------------------------------------------------------------------

OWN_MACHINE = [
    "http://127.1:11434",
    "http://0.0.0.0:11434",
    "http://2130706433:11434",
    "http://[::ffff:127.0.0.1]:11434",
    "http://[::1]:11434",
    "http://[::]:11434",
    "http://0x7f.0.0.1:11434",
]
MALFORMED = [
    ("ftp://192.0.2.10:11434", "http or https"),
    ("http://192.0.2.10:0", "port"),
    ("http://192.0.2.10:70000", "port"),
    ("http://192.0.2.10:11434/a%zz", "percent-encoding"),
    ("http://192.0.2.10:11434/a\x01b", "control characters"),
    ("http://192.0.2.10:11434/a b", "control characters"),
    ("http://:11434", "no host"),
]


@pytest.mark.parametrize("url", OWN_MACHINE)
async def test_a_node_elsewhere_cannot_point_the_router_at_its_own_machine(herd_router, url):
    router = remote(await herd_router(env={"FLEET_ENROLL_MINUTES": "10"}))  # even in a window
    body, headers = signed(KEY_A, heartbeat_payload("n1", url=url, loaded=[MODEL]), present=True)
    status, reply = await post(router, None, headers, raw=body)
    assert status == 400 and reply["field"] == "endpoints[0].url"
    assert "this router's own machine" in reply["error"]
    assert router.services.fleet.nodes == {} and router.services.fleet.pending == {}
    assert router.services.admission.records == {}


@pytest.mark.parametrize("url,problem", MALFORMED)
async def test_a_malformed_node_url_is_a_400_naming_it_from_anywhere(herd_router, url, problem):
    router = await herd_router(env=NO_WINDOW)
    status, reply = await post(router, heartbeat_payload("n1", url=url))  # from this machine
    assert status == 400 and problem in reply["error"] and reply["field"] == "endpoints[0].url"
    remote(router)
    body, headers = signed(KEY_A, heartbeat_payload("n1", url=url), present=True)
    status, reply = await post(router, None, headers, raw=body)
    assert status == 400 and problem in reply["error"]
    assert router.services.fleet.nodes == {} and router.services.fleet.pending == {}


async def test_loopback_urls_are_fine_for_a_node_on_this_machine(herd_router):
    router = await herd_router(env=NO_WINDOW)
    for url in OWN_MACHINE:
        status, reply = await post(router, heartbeat_payload("here", url=url))
        assert status == 200 and reply["admission"] == "local"


# --- bounds -------------------------------------------------------------------------------------


async def test_two_thousand_forged_node_ids_do_not_grow_the_registry(herd_router):
    router = remote(await herd_router(env={"FLEET_MAX_PENDING_NODES": "8", **NO_WINDOW}))
    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession() as http:
        for i in range(2000):
            body, headers = signed(KEY_A, heartbeat_payload(f"forged-{i}", url="http://192.0.2.9"),
                                   present=True)
            async with http.post(f"{router.url}/heartbeat", data=body,
                                 headers={"Content-Type": "application/json", **headers}) as r:
                statuses[r.status] = statuses.get(r.status, 0) + 1
                if r.status == 429:
                    assert "FLEET_MAX_PENDING_NODES" in (await r.json())["error"]
    assert statuses == {202: 8, 429: 1992}
    registry = router.services.fleet
    assert len(registry.pending) == 8 and registry.nodes == {}
    # the flood of strangers does not crowd out a real node: admitted ones are counted apart
    router.services.admission.is_local = lambda peer, sockname: True
    status, _ = await post(router, heartbeat_payload("real"))
    assert status == 200 and "real" in registry.nodes


async def test_node_and_model_caps(herd_router):
    router = await herd_router(env={"FLEET_MAX_NODES": "2", "FLEET_MAX_MODELS_PER_NODE": "3",
                                    **NO_WINDOW})
    assert (await post(router, heartbeat_payload("n1")))[0] == 200
    assert (await post(router, heartbeat_payload("n2")))[0] == 200
    status, reply = await post(router, heartbeat_payload("n3"))
    assert status == 503 and "FLEET_MAX_NODES" in reply["error"]
    assert (await post(router, heartbeat_payload("n1")))[0] == 200  # known ones still report
    status, reply = await post(router, heartbeat_payload("n1", available=["a", "b", "c", "d"]))
    assert status == 400 and "FLEET_MAX_MODELS_PER_NODE" in reply["error"]
    assert set(router.services.fleet.nodes) == {"n1", "n2"}
    assert router.services.fleet.nodes["n1"].available == {}


async def test_silent_nodes_are_forgotten_pending_ones_sooner(herd_router):
    router = await herd_router(env={
        "FLEET_HEARTBEAT_TIMEOUT": "0.05", "FLEET_HEARTBEAT_OFFLINE": "0.1",
        "FLEET_EVICT_AFTER": "0.6", "FLEET_PENDING_EVICT_AFTER": "0.2", **NO_WINDOW,
    })
    assert (await post(router, heartbeat_payload("gone")))[0] == 200
    remote(router)
    body, headers = signed(KEY_A, heartbeat_payload("waiting", url="http://192.0.2.10"),
                           present=True)
    assert (await post(router, None, headers, raw=body))[0] == 202
    registry = router.services.fleet
    await wait_for(lambda: "waiting" not in registry.pending)
    assert "gone" in registry.nodes  # offline by now, but not yet forgotten
    await wait_for(lambda: "gone" not in registry.nodes)
    assert not any(node_id == "gone" for node_id, _ in registry.queues)


# --- the admin routes ---------------------------------------------------------------------------


async def test_admin_routes_want_json_loopback_or_the_admin_key(herd_router):
    router = await herd_router(env=NO_WINDOW)
    url = f"{router.url}/fleet/enroll"
    async with aiohttp.ClientSession() as http:
        # a browser form cannot post JSON cross-site without a preflight: form bodies are refused
        async with http.post(url, data="minutes=5",
                             headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
            assert r.status == 415 and "application/json" in (await r.json())["error"]
        async with http.post(url, json={"minutes": 1},
                             headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 403
        async with http.post(url, json={"minutes": "many"}) as r:
            assert r.status == 400 and "minutes" in (await r.json())["error"]
        async with http.post(url, json={"minutes": 0}) as r:
            assert r.status == 200 and (await r.json())["open"] is False
        router.services.admission.is_loopback_peer = lambda peer: False  # from elsewhere
        async with http.post(url, json={"minutes": 1}) as r:
            assert r.status == 403 and "FLEET_ADMIN_KEY" in (await r.json())["error"]
        async with http.get(f"{router.url}/fleet/nodes") as r:
            assert r.status == 200  # reads are open while no admin key is set
    assert router.services.admission.window_open() is False


async def test_with_an_admin_key_fleet_reads_and_writes_need_it(herd_router):
    router = await herd_router(env={"FLEET_ADMIN_KEY": "k3y", **NO_WINDOW})
    router.services.admission.is_loopback_peer = lambda peer: False  # from elsewhere
    async with aiohttp.ClientSession() as http:
        for path in ("/fleet/status", "/fleet/queue", "/fleet/traces", "/fleet/nodes"):
            async with http.get(router.url + path) as r:
                assert r.status == 401 and "admin key" in (await r.json())["error"]
            async with http.get(router.url + path, headers={"X-API-Key": "k3y"}) as r:
                assert r.status == 200
            async with http.get(router.url + path, headers={"Authorization": "Bearer nope"}) as r:
                assert r.status == 401
        async with http.get(f"{router.url}/fleet/hello") as r:
            assert r.status == 200  # nodes use it before they have anything
        async with http.post(f"{router.url}/fleet/enroll", json={"minutes": 1},
                             headers={"Authorization": "Bearer k3y"}) as r:
            assert r.status == 200
    os.environ["FLEET_ADMIN_KEY"] = "k3y"  # the command line sends the key it is given
    try:
        assert await cli("nodes", "--router", router.url) == 0
    finally:
        del os.environ["FLEET_ADMIN_KEY"]
    assert await cli("nodes", "--router", router.url) == 1
