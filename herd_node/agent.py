"""The heartbeat loop: at a fixed rate, read every sensor and backend probe concurrently (each
with a timeout, none blocking the loop), merge their fragments into one heartbeat and post it to
the router. On stop it tells the router it is draining, so work stops at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import secrets
import socket
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog

from herd_kernel import __version__, auth
from herd_kernel.api import NodeContext
from herd_kernel.auth import NODE_KEY_HEADER, NODE_SIGNATURE_HEADER, fingerprint, is_loopback
from herd_kernel.config import Config
from herd_kernel.plugins import PluginHost
from herd_node import proxy

log = structlog.get_logger("herd.node")

_FIRST_RETRY_S = 0.1  # after a failed heartbeat; doubled per failure up to the interval
# Router and node often start together (at boot, or `herd` and `herd-node` side by side): until
# the router has answered once, a refused connection means "not listening yet", so look again
# this soon, for this long, before backing off. A refused local connect costs next to nothing.
_BOOT_RETRY_S, _BOOT_WINDOW_S = 0.02, 10.0


class NodeAgent:
    side = "node"  # herd_startup / herd_shutdown receive this agent as their NodeAPI

    def __init__(self, config: Config, host: PluginHost) -> None:
        self.config = config
        self.host = host
        self.node_id: str = config["FLEET_NODE_NODE_ID"]
        self.interval: float = config["FLEET_NODE_HEARTBEAT_INTERVAL"]
        self.router_url: str = config["FLEET_NODE_ROUTER_URL"].rstrip("/")
        self.sensors = host.sensors(config)
        self.backends = host.backends(config)
        self.discoveries = host.discoveries(config)
        self.http: aiohttp.ClientSession | None = None
        self.secret: str = config["FLEET_NODE_SECRET"]
        self.instance_id = ""
        self.key = ""  # this installation's own key: signs every heartbeat (admission)
        self.key_pinned = False  # the router has our key: stop sending it
        self.advertised_ollama: str | None = None  # the LAN proxy's URL, when it runs
        self.heartbeats_sent = 0
        self.failures = 0
        self.refused = False
        self.last_status: str | None = None
        self._stopping = asyncio.Event()
        self._static = {
            "hostname": socket.gethostname(),
            "arch": platform.machine(),
            "os": platform.system().lower(),
        }

    @property
    def budget(self) -> float:
        """Seconds each sensor and probe gets per heartbeat before it is cancelled."""
        return max(0.5, self.interval * 0.8)

    @property
    def context(self) -> NodeContext:
        assert self.http is not None
        return NodeContext(config=self.config, node_id=self.node_id, http=self.http,
                           budget=self.budget)

    async def collect(self) -> dict[str, Any]:
        """One heartbeat payload: static facts, then sensors in order, then backend reports."""
        ctx = self.context
        budget = self.budget
        readers = [(s.name, s.read(ctx)) for s in self.sensors]
        readers += [(f"backend:{b.name}", b.probe(ctx)) for b in self.backends]
        results = await asyncio.gather(
            *(asyncio.wait_for(coro, budget) for _, coro in readers), return_exceptions=True
        )
        payload: dict[str, Any] = {
            "node_id": self.node_id,
            "instance_id": self.instance_id,
            "agent_version": __version__,
            "timestamp": time.time(),
            **self._static,
        }
        extras: dict[str, Any] = {}
        for (name, _), result in zip(readers, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("probe failed", probe=name, error=repr(result))
                continue
            if not isinstance(result, Mapping):
                log.warning("probe returned a non-mapping", probe=name)
                continue
            for key, value in result.items():
                if key == "extras" and isinstance(value, Mapping):
                    extras.update(value)
                elif key == "paused":
                    # any sensor may pause the node; a later "false" must not undo another's "true"
                    payload["paused"] = bool(payload.get("paused")) or value is True
                elif key == "endpoints" and isinstance(value, list):
                    payload.setdefault("endpoints", []).extend(value)  # one list, every backend
                else:
                    payload[key] = value
        if extras:
            payload["extras"] = extras
        if self.advertised_ollama:
            # the engine the LAN proxy fronts is reached through the proxy
            target = self.config["FLEET_NODE_OLLAMA_HOST"].rstrip("/")
            target = target if "://" in target else f"http://{target}"
            for endpoint in payload.get("endpoints", ()):
                if isinstance(endpoint, dict) and endpoint.get("url") == target:
                    endpoint["url"] = self.advertised_ollama
        return payload

    def _signed(self, payload: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(payload).encode()
        headers = auth.json_headers(self.secret, "POST", "/heartbeat", body)
        if self.key:
            headers[NODE_SIGNATURE_HEADER] = auth.sign(self.key, "POST", "/heartbeat", body)
            if not self.key_pinned:
                # until the router has it: an owner's approval pins the key it sees here
                headers[NODE_KEY_HEADER] = self.key
        return body, headers

    async def send(self, payload: Mapping[str, Any]) -> dict[str, Any] | None:
        assert self.http is not None
        body, headers = self._signed(payload)
        try:
            async with self.http.post(
                f"{self.router_url}/heartbeat",
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=max(2.0, self.interval)),
            ) as response:
                body = await response.json(content_type=None)
                if response.status == 401:
                    self.key_pinned = False  # e.g. the owner removed us: present the key again
                if response.status not in (200, 202):
                    raise RuntimeError(f"router said {response.status}: {body}")
        except Exception as exc:  # noqa: BLE001 - the router may be down; keep trying
            self.failures += 1
            self.refused = isinstance(getattr(exc, "os_error", None), ConnectionRefusedError)
            if self.failures == 1 or self.failures % 12 == 0:
                log.warning("heartbeat failed", router=self.router_url, error=repr(exc),
                            failures=self.failures)
            return None
        if self.failures:
            log.info("router reachable again", router=self.router_url, after=self.failures)
        self.failures = 0
        self.heartbeats_sent += 1
        status = body.get("node_status") if isinstance(body, dict) else None
        admission = body.get("admission") if isinstance(body, dict) else None
        self.key_pinned = admission in ("admitted", "local", "secret")
        if status != self.last_status:
            if status == "pending":
                log.warning("waiting for the router's owner to admit this node: on the router run "
                            f"`herd nodes approve {self.node_id}` and compare the key",
                            router=self.router_url, key=fingerprint(self.key))
            else:
                log.info("registered with router", router=self.router_url, status=status,
                         admission=admission)
            self.last_status = status
        return body

    async def find_router(self) -> str:
        if self.router_url:
            await self._trust(self.router_url, wait=True)
            return self.router_url
        if not self.discoveries:
            raise RuntimeError(
                "no router URL given and no discovery plugin installed: "
                "pass --router-url http://ROUTER:11435 (or set FLEET_NODE_ROUTER_URL)"
            )
        while not self._stopping.is_set():
            for discovery in self.discoveries:
                try:
                    url = await discovery.find_router(self.config, timeout=10.0)
                except Exception as exc:  # noqa: BLE001 - a broken discovery must not kill the agent
                    log.error("discovery failed", via=discovery.name, error=repr(exc))
                    await asyncio.sleep(1.0)
                    continue
                if url and await self._trust(url, wait=False):
                    log.info("found router", url=url, via=discovery.name)
                    return url.rstrip("/")
            log.info("no router found yet; still looking")
        raise asyncio.CancelledError

    async def _trust(self, url: str, *, wait: bool) -> bool:
        """With a secret, only a router that answers our challenge gets heartbeats (an impostor
        would learn this machine's state and receive its traffic)."""
        if not self.secret:
            return True
        assert self.http is not None
        while not self._stopping.is_set():
            if await auth.check_router(self.http, url, self.secret):
                return True
            log.error("router did not prove it knows the fleet secret; not reporting to it",
                      router=url)
            if not wait:
                return False
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=max(1.0, self.interval))
            except TimeoutError:
                pass
        raise asyncio.CancelledError

    async def run(self) -> None:
        """Heartbeat at a fixed rate until ``stop()``; then send a draining heartbeat."""
        self.instance_id = await asyncio.to_thread(self._load_instance_id)
        self.key = await asyncio.to_thread(self._load_key)
        async with aiohttp.ClientSession() as http:
            self.http = http
            try:
                self.router_url = await self.find_router()
            except asyncio.CancelledError:
                if self._stopping.is_set():
                    self.http = None
                    return
                raise
            log.info("node agent started", node=self.node_id, router=self.router_url,
                     ollama=self.config["FLEET_NODE_OLLAMA_HOST"], interval=self.interval,
                     key=fingerprint(self.key))
            proxy_runner = await self._start_proxy()
            await self.host.lifecycle("herd_startup", self)
            loop = asyncio.get_running_loop()
            next_tick = started = loop.time()
            while not self._stopping.is_set():
                payload = await self.collect()
                sent = await self.send(payload)
                # fixed rate: the next beat is due one interval after the last was due, however
                # long this one took; beats that are already overdue are skipped, not bunched
                next_tick += self.interval
                now = loop.time()
                if next_tick < now:
                    next_tick = now + self.interval - ((now - next_tick) % self.interval)
                if sent is None:
                    # the router is not there (yet: both start at boot; or it restarts): try again
                    # soon, backing off to the interval, so the node is routable within a moment
                    # of the router answering rather than a whole interval later
                    retry = min(self.interval, _FIRST_RETRY_S * 2 ** min(self.failures - 1, 8))
                    if self.refused and not self.heartbeats_sent and \
                            now - started < _BOOT_WINDOW_S:
                        retry = _BOOT_RETRY_S
                    next_tick = min(next_tick, now + retry)
                try:
                    await asyncio.wait_for(self._stopping.wait(), timeout=next_tick - now)
                except TimeoutError:
                    pass
            await self.drain()
            await self.host.lifecycle("herd_shutdown", self, reverse=True)
            if proxy_runner is not None:
                await proxy_runner.cleanup()
        self.http = None

    def proxy_wanted(self) -> bool:
        mode = str(self.config["FLEET_NODE_LAN_PROXY"]).lower()
        if mode == "on":
            return True
        if mode != "auto":
            return False
        host = urlsplit(self.config["FLEET_NODE_OLLAMA_HOST"]).hostname or ""
        return bool(self.secret) and is_loopback(host)

    async def _start_proxy(self) -> Any:
        if not self.proxy_wanted():
            return None
        try:
            runner, port = await proxy.start(
                self.config["FLEET_NODE_OLLAMA_HOST"], self.secret,
                self.config["FLEET_NODE_PROXY_HOST"], self.config["FLEET_NODE_PROXY_PORT"],
            )
        except OSError as exc:
            log.error("LAN proxy could not listen; the router gets the Ollama URL as configured",
                      port=self.config["FLEET_NODE_PROXY_PORT"], error=str(exc))
            return None
        bind = self.config["FLEET_NODE_PROXY_HOST"]
        shown = "127.0.0.1" if bind in ("0.0.0.0", "", "::") else bind
        # a loopback address here means "me": the router swaps in the address we post from
        self.advertised_ollama = f"http://{shown}:{port}"
        if not self.secret:
            log.warning("LAN proxy without a fleet secret: anyone on the network can use this "
                        "node's Ollama through it", port=port)
        log.info("LAN proxy to the local Ollama", listen=f"{bind}:{port}", signed=bool(self.secret))
        return runner

    def _load_instance_id(self) -> str:
        """A random id for this agent installation, kept in the data dir so a restart keeps it."""
        path = Path(self.config["FLEET_NODE_DATA_DIR"]) / f"agent-{self.node_id}.id"
        try:
            value = path.read_text().strip()
            if value:
                return value
        except OSError:
            pass
        value = uuid.uuid4().hex
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(value + "\n")
        except OSError as exc:
            log.warning("cannot keep the agent id; a restart will look like a new agent",
                        path=str(path), error=repr(exc))
        return value

    def _load_key(self) -> str:
        """This installation's node key, kept (owner-readable only) in the data dir: the router
        pins it when the node is admitted, so no other device can speak for this node."""
        path = Path(self.config["FLEET_NODE_DATA_DIR"]) / f"agent-{self.node_id}.key"
        try:
            value = path.read_text().strip()
            if len(value) == 64:
                return value
        except OSError:
            pass
        value = secrets.token_hex(32)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(value + "\n")
        except OSError as exc:
            log.warning("cannot keep the node key; after a restart the router's owner must "
                        "admit this node again", path=str(path), error=repr(exc))
        return value

    async def drain(self) -> None:
        assert self.http is not None
        body, headers = self._signed({"node_id": self.node_id, "instance_id": self.instance_id,
                                      "agent_version": __version__, "draining": True})
        try:
            async with self.http.post(
                f"{self.router_url}/heartbeat",
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=3),
            ) as response:
                await response.read()
            log.info("told the router we are draining", router=self.router_url)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not tell the router we are draining", error=repr(exc))

    def stop(self) -> None:
        self._stopping.set()
