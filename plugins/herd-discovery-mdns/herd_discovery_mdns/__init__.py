"""Discovery over mDNS / DNS-SD: the router announces ``_herd._tcp.local.`` with zeroconf; a node
agent with no router URL browses for it, checks that each answer is a Herd router and picks one.

An announcement is only a hint: anyone on the LAN can send one. A node keeps only routers that
answer ``GET /fleet/hello`` as Herd, prefers one that proves the fleet secret, and the agent then
checks the secret itself (``herd_kernel.auth.check_router``) before it sends a heartbeat.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os
import secrets
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Self

import aiohttp
import structlog

from herd_discovery_mdns.records import (
    DEFAULT_SERVICE_TYPE,
    WILDCARD_BINDS,
    Candidate,
    announced_addresses,
    candidate_urls,
    decode_txt,
    instance_name,
    normalize_service_type,
    parse_interfaces,
    rank,
    server_label,
    service_txt,
    split_url,
)
from herd_kernel import auth
from herd_kernel.config import Config, Setting, SettingError
from herd_kernel.hookspecs import hookimpl
from herd_kernel.lazy import lazy

# zeroconf (about 3 MB) loads when discovery first runs, not in every process that loads plugins
InterfaceChoice = lazy("zeroconf", "InterfaceChoice")
IPVersion = lazy("zeroconf", "IPVersion")
ServiceStateChange = lazy("zeroconf", "ServiceStateChange")
AsyncServiceBrowser = lazy("zeroconf.asyncio", "AsyncServiceBrowser")
AsyncServiceInfo = lazy("zeroconf.asyncio", "AsyncServiceInfo")
AsyncZeroconf = lazy("zeroconf.asyncio", "AsyncZeroconf")

__all__ = ["Candidate", "MdnsDiscovery", "rank", "service_txt"]

log = structlog.get_logger("herd.discovery.mdns")

SETTINGS = (
    Setting(env="FLEET_MDNS", type=bool, default=True, scope="both",
            help="Announce the router (router) and look for it (node) with mDNS on the local "
            "network; false turns this discovery off."),
    Setting(env="FLEET_MDNS_SERVICE_TYPE", type=str, default=DEFAULT_SERVICE_TYPE,
            help="DNS-SD service type the router announces."),
    Setting(env="FLEET_MDNS_SERVICE_NAME", type=str, default="",
            help="mDNS instance name of the router; empty means 'Herd router on <host name>'. "
            "A name already taken on the network gets a '-2' suffix."),
    Setting(env="FLEET_MDNS_INTERFACES", type=str, default="", scope="both",
            help="Comma-separated IPv4 addresses of the interfaces mDNS uses (router and node); "
            "empty uses every interface."),
    Setting(env="FLEET_NODE_MDNS_SERVICE_TYPE", type=str, default=DEFAULT_SERVICE_TYPE,
            scope="node", help="DNS-SD service type the node agent looks for."),
)

# after the first router answers, keep listening this long for others, so the choice between
# several routers does not depend on which one happened to answer first
SETTLE_SECONDS = 1.0
# a resolved service whose /fleet/hello did not answer (e.g. announced a moment before its
# listener was up) is asked again this often until the search ends
RECHECK_SECONDS = 0.5
HELLO_TIMEOUT = 2.0
RESOLVE_TIMEOUT_MS = 3000
# how long the router side waits for its own listener before giving up on announcing
READY_TIMEOUT = 30.0


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_discovery(config: Config) -> Sequence[Any]:
    if not config.get("FLEET_MDNS", True):
        return []
    return [MdnsDiscovery(config)]


class MdnsDiscovery:
    """One object per router or agent; it remembers which URLs it has handed the agent."""

    name = "mdns"

    def __init__(self, config: Config) -> None:
        try:
            self.interfaces = parse_interfaces(config.get("FLEET_MDNS_INTERFACES", ""))
        except ValueError as exc:
            raise SettingError(str(exc)) from None
        self.handed_out: Counter[str] = Counter()
        self.last_candidates: list[Candidate] = []  # the latest search, best first (diagnostics)

    def _zeroconf(self, addresses: list[str] | None = None) -> AsyncZeroconf:
        # AsyncZeroconf attaches to the running loop: its sockets are served by this event loop,
        # never by blocking calls. IPv4 only: the router's addresses are resolved as IPv4 too.
        interfaces = self.interfaces or InterfaceChoice.All
        if addresses and all(ipaddress.ip_address(a).is_loopback for a in addresses):
            # a router reachable only on loopback has nothing to tell the network: announce on
            # loopback alone, so not one packet leaves the machine
            interfaces = ["127.0.0.1"]
        return AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)

    # --- router side -----------------------------------------------------------------------------

    async def announce(self, url: str, config: Config) -> Callable[[], Awaitable[None]]:
        problem = isolation_problem()
        if problem:
            log.warning("mdns: not announcing", reason=problem)
            return _nothing
        bind, port = split_url(url)
        addresses = await self._addresses_for(bind)
        if not addresses:
            log.warning("mdns: nothing to announce (IPv6-only bind?)", bind=bind)
            return _nothing
        service_type = normalize_service_type(config.get("FLEET_MDNS_SERVICE_TYPE", ""))
        hostname = socket.gethostname()
        name = instance_name(config.get("FLEET_MDNS_SERVICE_NAME", ""), hostname)
        info = AsyncServiceInfo(
            service_type,
            f"{name}.{service_type}",
            port=port,
            properties=service_txt(secured=bool(config.get("FLEET_SECRET", ""))),
            server=server_label(hostname, secrets.token_hex(3)),
            parsed_addresses=addresses,
        )
        # The router calls announce before its listener is up, and probing for the name takes
        # about a second: both happen in the background so the router starts serving at once.
        state = _Announcement(info)
        task = asyncio.create_task(
            self._announce_when_ready(state, [f"http://{a}:{port}" for a in addresses]),
            name="herd-mdns-announce",
        )

        async def withdraw() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if state.zc is None:
                return
            try:
                if state.registered:
                    # the goodbye (TTL 0) lets browsing nodes forget this router at once
                    await (await state.zc.async_unregister_service(info))
                    log.info("mdns: withdrawn", service=info.name)
            finally:
                await state.zc.async_close()

        return withdraw

    async def _announce_when_ready(self, state: _Announcement, urls: list[str]) -> None:
        """Announce once the router answers /fleet/hello at an address it will announce: never
        advertise a port that is not open yet, or an address it cannot be reached on (a wrong
        FLEET_HOST or FLEET_PORT)."""
        info = state.info
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        pause = 0.05
        async with aiohttp.ClientSession() as http:
            while not any(await asyncio.gather(*(_hello(http, u, "", 1.0) for u in urls))):
                if loop.time() > deadline:
                    log.warning("mdns: not announcing: the router does not answer at the "
                                "address it would announce", urls=urls)
                    return
                await asyncio.sleep(pause)
                pause = min(1.0, pause * 2)
        wanted = info.name
        try:
            state.zc = self._zeroconf(list(info.parsed_addresses()))
            # probes for the name first; allow_name_change turns a clash into "<name>-2"
            broadcast = await state.zc.async_register_service(info, allow_name_change=True)
            state.registered = True
            if info.name != wanted:
                log.info("mdns: name taken on the network, renamed", wanted=wanted,
                         service=info.name)
            log.info("mdns: announced", service=info.name, addresses=info.parsed_addresses(),
                     port=info.port, txt=decode_txt(info.properties))
            await broadcast
        except Exception as exc:  # noqa: BLE001 - the router keeps serving without mDNS
            log.warning("mdns: announce failed", service=wanted, error=repr(exc))

    async def _addresses_for(self, bind: str) -> list[str]:
        loop = asyncio.get_running_loop()
        if bind in WILDCARD_BINDS:
            local = await asyncio.to_thread(_local_ipv4)
            return announced_addresses(bind, local, self.interfaces)
        try:
            ipaddress.ip_address(bind)
            binds = [bind]
        except ValueError:  # a host name, e.g. localhost: what the listener bound to
            try:
                infos = await loop.getaddrinfo(bind, None, family=socket.AF_INET)
            except OSError as exc:
                log.warning("mdns: cannot resolve the bind address", bind=bind, error=repr(exc))
                return []
            binds = list(dict.fromkeys(str(i[4][0]) for i in infos))
        out: list[str] = []
        for item in binds:
            out += [a for a in announced_addresses(item, (), self.interfaces) if a not in out]
        return out

    # --- node side -------------------------------------------------------------------------------

    async def find_router(self, config: Config, timeout: float) -> str | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            candidates = await self._search(config, deadline)
        except Exception as exc:  # noqa: BLE001 - e.g. no usable interface; the agent retries
            log.warning("mdns: search failed", error=repr(exc))
            candidates = []
        if not candidates:
            # the agent calls again at once when we return None: wait out the timeout so a
            # failing search does not turn into a busy loop
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            return None
        return self.choose(candidates, has_secret=bool(config.get("FLEET_NODE_SECRET", "")))

    def choose(self, candidates: Sequence[Candidate], has_secret: bool) -> str:
        ordered = rank(candidates, has_secret, self.handed_out)
        self.last_candidates = ordered
        best = ordered[0]
        self.handed_out[best.url] += 1
        if len(ordered) > 1:
            log.warning("mdns: several Herd routers answer; choosing one",
                        chosen=best.describe(), others=[c.describe() for c in ordered[1:]])
        else:
            log.info("mdns: found router", router=best.describe())
        if best.claims_secured and not has_secret:
            log.warning("mdns: this router says it requires the fleet secret and this node has "
                        "none; set FLEET_NODE_SECRET (or --secret)", router=best.url)
        return best.url

    async def _search(self, config: Config, deadline: float) -> list[Candidate]:
        """Browse until the deadline, or until SETTLE_SECONDS after the first Herd answer."""
        problem = isolation_problem()
        if problem:
            raise RuntimeError(f"not searching: {problem}")
        loop = asyncio.get_running_loop()
        service_type = normalize_service_type(config.get("FLEET_NODE_MDNS_SERVICE_TYPE", ""))
        secret = config.get("FLEET_NODE_SECRET", "")
        # service instance name -> (the resolution checked, the router that answered there)
        found: dict[str, tuple[AsyncServiceInfo, Candidate]] = {}
        first_answer: float | None = None
        browse = _Browse(self._zeroconf(), service_type)
        async with browse, aiohttp.ClientSession() as http:
            while True:
                # unchecked, re-resolved (an update may move the port), or not answering yet
                pending = [(n, i) for n, i in browse.resolved.items()
                           if n not in found or found[n][0] is not i]
                if pending:
                    left = max(0.1, min(HELLO_TIMEOUT, deadline - loop.time()))
                    results = await asyncio.gather(
                        *(_check_service(http, n, i, secret, left) for n, i in pending)
                    )
                    for (service, info), candidate in zip(pending, results, strict=True):
                        if candidate is not None:
                            found[service] = (info, candidate)
                        else:
                            found.pop(service, None)
                # a service that said goodbye is no longer a router to offer
                for service in [s for s in found if s not in browse.resolved]:
                    del found[service]
                now = loop.time()
                if found and first_answer is None:
                    first_answer = now
                end = deadline
                if first_answer is not None:
                    end = min(deadline, first_answer + SETTLE_SECONDS)
                if now >= end:
                    return [candidate for _, candidate in found.values()]
                browse.changed.clear()
                try:
                    await asyncio.wait_for(browse.changed.wait(), min(RECHECK_SECONDS, end - now))
                except TimeoutError:
                    pass


class _Announcement:
    def __init__(self, info: AsyncServiceInfo) -> None:
        self.info = info
        self.zc: AsyncZeroconf | None = None
        self.registered = False


async def _nothing() -> None:
    return None


def isolation_problem() -> str | None:
    """Why zeroconf must not start in this process, or None.

    A test run must never put mDNS on the real network of the machine it runs on, yet any test
    that starts a router or agent with every installed plugin loads this one. So under pytest
    zeroconf starts only inside a network namespace of its own: one that is not PID 1's (as
    `unshare -n` or `ip netns exec` give), or one with nothing but loopback.
    """
    if "PYTEST_CURRENT_TEST" not in os.environ:
        return None
    try:
        if os.stat("/proc/self/ns/net").st_ino != os.stat("/proc/1/ns/net").st_ino:
            return None
    except OSError:
        pass
    try:
        # this process's namespace, unlike /sys/class/net, which shows the one sysfs was mounted in
        if {name for _, name in socket.if_nameindex()} <= {"lo"}:
            return None
    except OSError:
        pass
    return "a test run outside an isolated network namespace (run it under `unshare -n`)"


def _local_ipv4() -> list[str]:
    """Every IPv4 address of this machine (ifaddr comes with zeroconf); blocking, so threaded."""
    import ifaddr

    return [ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips
            if isinstance(ip.ip, str)]


async def _check_service(
    http: aiohttp.ClientSession, service: str, info: AsyncServiceInfo, secret: str, timeout: float
) -> Candidate | None:
    """The first of the service's addresses where a Herd router answers, or None."""
    txt = decode_txt(info.properties)
    urls = candidate_urls(info.parsed_addresses(IPVersion.V4Only), info.port or 0, txt)
    answers = await asyncio.gather(*(_hello(http, url, secret, timeout) for url in urls))
    for url, hello in zip(urls, answers, strict=True):
        if hello is None:
            continue
        body, proved = hello
        claimed = txt.get("secured")
        return Candidate(
            url=url,
            service=service,
            router_id=str(body.get("router_id") or ""),
            version=str(body.get("version") or txt.get("version") or ""),
            claims_secured=claimed == "1" if claimed in ("0", "1") else bool(body.get("secured")),
            proved=proved,
        )
    if urls:
        log.debug("mdns: announced service does not answer as Herd", service=service, urls=urls)
    return None


async def _hello(
    http: aiohttp.ClientSession, url: str, secret: str, timeout: float
) -> tuple[dict[str, Any], bool] | None:
    """Ask ``url`` who it is; with a secret, also challenge it (same HMAC as auth.check_router,
    in the same request). None when it is not a Herd router."""
    nonce = secrets.token_hex(16)
    try:
        async with http.get(
            f"{url}/fleet/hello",
            params={"nonce": nonce},
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,  # an announcement must not send us somewhere else
        ) as response:
            if response.status != 200:
                return None
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError, OSError):
        return None
    if not isinstance(body, dict) or body.get("service") != "herd":
        return None
    proof = body.get("proof")
    proved = bool(secret) and isinstance(proof, str) and hmac.compare_digest(
        proof, auth.router_proof(secret, nonce)
    )
    return body, proved


class _Browse:
    """A running AsyncServiceBrowser that keeps the resolved services of one type by name."""

    def __init__(self, zc: AsyncZeroconf, service_type: str) -> None:
        self.zc = zc
        self.service_type = service_type
        self.resolved: dict[str, AsyncServiceInfo] = {}
        self.changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._browser: AsyncServiceBrowser | None = None

    async def __aenter__(self) -> Self:
        try:
            self._browser = AsyncServiceBrowser(
                self.zc.zeroconf, [self.service_type], handlers=[self._on_change]
            )
        except BaseException:
            await self.zc.async_close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            if self._browser is not None:
                await self._browser.async_cancel()
        finally:
            await self.zc.async_close()

    def _on_change(
        self, zeroconf: Any, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        # called on the event loop by zeroconf; resolving needs awaiting, so it gets a task
        if state_change is ServiceStateChange.Removed:
            self.resolved.pop(name, None)
            self.changed.set()
            return
        task = asyncio.get_running_loop().create_task(self._resolve(service_type, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, service_type: str, name: str) -> None:
        info = AsyncServiceInfo(service_type, name)
        try:
            ok = await info.async_request(self.zc.zeroconf, RESOLVE_TIMEOUT_MS)
        except Exception as exc:  # noqa: BLE001 - one bad answer must not end the search
            log.debug("mdns: resolve failed", service=name, error=repr(exc))
            return
        if ok and info.port:
            self.resolved[name] = info
            self.changed.set()
