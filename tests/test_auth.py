"""The fleet secret: signed heartbeats, replay and forgery refused, routers that must prove
themselves, node ids that cannot be taken over."""

import json
import time

import aiohttp
import pytest

from herd_kernel import auth
from herd_kernel.testing import heartbeat_payload, wait_for

SECRET = "correct horse battery staple"


def test_sign_and_verify_round_trip_and_failures():
    nonces = auth.NonceCache()
    body = b'{"node_id": "n"}'
    header = auth.sign(SECRET, "POST", "/heartbeat", body)
    assert auth.verify(SECRET, header, "POST", "/heartbeat", body, nonces) is None
    assert "replay" in auth.verify(SECRET, header, "POST", "/heartbeat", body, nonces)
    header = auth.sign(SECRET, "POST", "/heartbeat", body)
    assert "wrong fleet secret" in auth.verify("guess", header, "POST", "/heartbeat", body, nonces)
    assert "wrong fleet secret" in auth.verify(SECRET, header, "POST", "/heartbeat", body + b" ", nonces)
    assert "wrong fleet secret" in auth.verify(SECRET, header, "POST", "/other", body, nonces)
    old = auth.sign(SECRET, "POST", "/heartbeat", body, now=time.time() - 3600)
    assert "expired" in auth.verify(SECRET, old, "POST", "/heartbeat", body, nonces)
    assert "missing" in auth.verify(SECRET, None, "POST", "/heartbeat", body, nonces)
    assert "malformed" in auth.verify(SECRET, "t=1,x", "POST", "/heartbeat", body, nonces)


def test_nonce_cache_is_bounded():
    cache = auth.NonceCache(limit=3)
    now = time.time()
    for i in range(10):
        assert cache.add(str(i), now)
    assert len(cache._seen) == 3


async def post(url, payload, headers=None, raw=None):
    async with aiohttp.ClientSession() as http:
        data = raw if raw is not None else json.dumps(payload).encode()
        async with http.post(f"{url}/heartbeat", data=data, headers=headers or {}) as r:
            return r.status, await r.json()


async def test_router_with_a_secret_refuses_unsigned_and_forged_heartbeats(herd_router):
    router = await herd_router(plugins="backend-ollama", env={"FLEET_SECRET": SECRET})
    body = json.dumps(heartbeat_payload("n1")).encode()
    status, reply = await post(router.url, None, raw=body)
    assert status == 401 and "unauthorized" in reply["error"]
    forged = auth.sign("not the secret", "POST", "/heartbeat", body)
    status, _ = await post(router.url, None, {auth.HEADER: forged}, raw=body)
    assert status == 401
    assert router.services.fleet.nodes == {}  # nothing registered
    good = auth.sign(SECRET, "POST", "/heartbeat", body)
    status, _ = await post(router.url, None, {auth.HEADER: good}, raw=body)
    assert status == 200 and "n1" in router.services.fleet.nodes
    status, _ = await post(router.url, None, {auth.HEADER: good}, raw=body)  # replayed
    assert status == 401


async def test_agents_with_and_without_the_secret(herd_router, herd_agent):
    router = await herd_router(plugins="backend-ollama", env={"FLEET_SECRET": SECRET})
    good = await herd_agent(router.url, "http://127.0.0.1:9", "good", plugins="backend-ollama",
                            env={"FLEET_NODE_SECRET": SECRET})
    assert good.heartbeats_sent >= 1 and "good" in router.services.fleet.nodes
    # an agent without the secret sends unsigned heartbeats: every one is refused
    stranger = await herd_agent(router.url, "http://127.0.0.1:9", "stranger",
                                plugins="backend-ollama", wait=False)
    await wait_for(lambda: good.heartbeats_sent >= 3)
    await wait_for(lambda: stranger.failures >= 2)
    assert stranger.heartbeats_sent == 0 and "stranger" not in router.services.fleet.nodes


async def test_an_agent_with_a_secret_ignores_a_router_that_cannot_prove_it(herd_router, herd_agent):
    impostor = await herd_router(plugins="backend-ollama")  # no secret: cannot answer the challenge
    agent = await herd_agent(impostor.url, "http://127.0.0.1:9", "careful", plugins="backend-ollama",
                             env={"FLEET_NODE_SECRET": SECRET}, wait=False, interval=0.05)
    async with aiohttp.ClientSession() as http:
        assert not await auth.check_router(http, impostor.url, SECRET)
    await wait_for(lambda: agent.http is not None)
    assert agent.heartbeats_sent == 0 and impostor.services.fleet.nodes == {}


async def test_hello_proves_the_router_knows_the_secret(herd_router):
    router = await herd_router(plugins="backend-ollama", env={"FLEET_SECRET": SECRET})
    async with aiohttp.ClientSession() as http:
        assert await auth.check_router(http, router.url, SECRET)
        assert not await auth.check_router(http, router.url, "other secret")
        async with http.get(f"{router.url}/fleet/hello") as r:
            body = await r.json()
    assert body["service"] == "herd" and body["secured"] is True and body["proof"] is None


@pytest.mark.parametrize("secret", ["", SECRET])
async def test_a_live_node_id_cannot_be_taken_over(herd_router, herd_agent, secret):
    env = {"FLEET_SECRET": secret} if secret else {}
    router = await herd_router(plugins="backend-ollama", env=env)
    node_env = {"FLEET_NODE_SECRET": secret} if secret else {}
    first = await herd_agent(router.url, "http://127.0.0.1:9", "studio", plugins="backend-ollama",
                             env=node_env)
    owner = router.services.fleet.nodes["studio"].heartbeat.instance_id
    payload = heartbeat_payload("studio", instance_id="someone-else")
    body = json.dumps(payload).encode()
    headers = {auth.HEADER: auth.sign(secret, "POST", "/heartbeat", body)} if secret else {}
    status, reply = await post(router.url, None, headers, raw=body)
    assert status == 409 and "in use by another agent" in reply["error"]
    assert router.services.fleet.nodes["studio"].heartbeat.instance_id == owner
    # once the owner has left (drained: offline), a new installation may take the name
    first.stop()
    await wait_for(lambda: router.services.fleet.nodes["studio"].status == "offline")
    headers = {auth.HEADER: auth.sign(secret, "POST", "/heartbeat", body)} if secret else {}
    status, _ = await post(router.url, None, headers, raw=body)
    assert status == 200
    assert router.services.fleet.nodes["studio"].heartbeat.instance_id == "someone-else"
