"""Who may be a node: agents on this machine join at once; with no fleet secret, a node elsewhere
waits (pending) until the owner approves it or an enrollment window is open, and is then pinned to
its own key. Also the checks on the URL a heartbeat names, and the guard of the admin routes.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import re
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog
from attrs import frozen

from herd_kernel import auth
from herd_kernel.auth import NODE_KEY_HEADER, NODE_SIGNATURE_HEADER, fingerprint
from herd_kernel.config import Config, write_atomically
from herd_kernel.fleet import Fleet, reachable_url
from herd_kernel.models import Heartbeat

log = structlog.get_logger("herd.admission")

_KEY_SHAPE = re.compile(r"[0-9a-f]{64}")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")


class Refused(Exception):
    """A heartbeat the router will not take; ``status`` and a message safe to show."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field

    @property
    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.field:
            body["field"] = self.field
        return body


@frozen(kw_only=True)
class Record:
    """An admitted node on another machine: the key its heartbeats must be signed with."""

    node_id: str
    key: str
    admitted_at: float
    via: str  # "approved" | "enrollment"

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)


# --- addresses and URLs ------------------------------------------------------------------------


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0].strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_loopback_peer(address: str | None) -> bool:
    ip = _ip(address or "")
    return ip is not None and ip.is_loopback


def is_own_loopback(address: str) -> bool:
    """Would a connection to ``address`` land on this machine itself? Loopback, unspecified
    (0.0.0.0, ::), and the IPv6 spellings of IPv4 loopback (mapped, compatible, 6to4)."""
    ip = _ip(address)
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.sixtofour is not None:
            ip = ip.sixtofour
        elif 1 < int(ip) < 2**32:  # ::a.b.c.d, the deprecated IPv4-compatible form
            ip = ipaddress.IPv4Address(int(ip))
    return ip.is_loopback or ip.is_unspecified


def url_problem(url: str) -> str | None:
    """What is wrong with a node URL's form, or None."""
    if _CONTROL.search(url):
        return "contains control characters or spaces"
    if _BAD_PERCENT.search(url):
        return "has a bad percent-encoding"
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    try:
        port = parts.port
    except ValueError:
        return "port must be a number from 1 to 65535"
    if parts.scheme not in ("http", "https"):
        return f"must be http or https, not {parts.scheme or 'nothing'!r}"
    if not parts.hostname:
        return "has no host"
    if port == 0:
        return "port must be a number from 1 to 65535"
    return None


class Resolver:
    """The event loop's ``getaddrinfo`` (never blocking the loop), few at a time, with a short,
    bounded cache so a node's heartbeat every few seconds costs one lookup per ``ttl``."""

    def __init__(self, ttl: float = 30.0, limit: int = 1024, concurrency: int = 4,
                 timeout: float = 5.0) -> None:
        self.ttl, self.limit, self.timeout = ttl, limit, timeout
        self._cache: dict[tuple[str, int], tuple[float, tuple[str, ...] | str]] = {}
        self._gate = asyncio.Semaphore(concurrency)

    async def addresses(self, host: str, port: int) -> tuple[str, ...]:
        """Every address ``host`` resolves to; ``OSError`` with a reason when it does not."""
        key = (host, port)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is None or hit[0] < now:
            result: tuple[str, ...] | str
            try:
                async with self._gate:
                    infos = await asyncio.wait_for(
                        asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM),
                        self.timeout)
                result = tuple(sorted({str(info[4][0]) for info in infos}))
            except (OSError, TimeoutError, UnicodeError) as exc:
                result = f"cannot resolve {host!r} ({exc or type(exc).__name__})"
            self._cache.pop(key, None)
            while len(self._cache) >= self.limit:
                self._cache.pop(next(iter(self._cache)))
            hit = self._cache[key] = (now + self.ttl, result)
        if isinstance(hit[1], str):
            raise OSError(hit[1])
        return hit[1]


# --- admission ----------------------------------------------------------------------------------


def _console(message: str) -> None:
    print(f"herd: {message}", file=sys.stderr, flush=True)


class Admission:
    """The admission book (persisted in ``<data dir>/admission.json``), the enrollment window,
    and the decision for each heartbeat. The registry (``Fleet``) holds the nodes themselves.

    Test seams (plain attributes): ``is_local(peer, sockname)`` says whether a heartbeat came from
    this machine, ``is_own_loopback(address)`` whether a URL's address is this machine's own,
    ``is_loopback_peer(peer)`` whether an admin call came over loopback.
    """

    def __init__(self, config: Config, fleet: Fleet, announce: Callable[[str], None] = _console):
        self.config = config
        self.fleet = fleet
        self.announce = announce
        self.path = Path(config["FLEET_DATA_DIR"]) / "admission.json"
        self.records: dict[str, Record] = {}
        self.window_until = 0.0  # wall clock; new nodes are admitted while it is in the future
        self.started = time.time()  # signatures older than this are refused (replays of before)
        self.nonces = auth.NonceCache()
        self.resolver = Resolver()
        self.own_addresses: frozenset[str] = frozenset()
        self.is_local: Callable[[str | None, str | None], bool] = self._is_local
        self.is_own_loopback: Callable[[str], bool] = is_own_loopback
        self.is_loopback_peer: Callable[[str | None], bool] = is_loopback_peer
        self._save_lock = asyncio.Lock()

    # --- state on disk -------------------------------------------------------------------------

    async def open(self) -> None:
        """Load the book; on the router's first start (no book yet) open the enrollment window."""
        self.started = time.time()
        first, records = await asyncio.to_thread(self._load)
        self.records = records
        self.own_addresses = await asyncio.to_thread(_own_addresses)
        if first:
            await self.save()
            minutes = float(self.config["FLEET_ENROLL_MINUTES"])
            if minutes > 0:
                self.open_window(minutes, reason="first start")

    def _load(self) -> tuple[bool, dict[str, Record]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return True, {}
        except (OSError, ValueError) as exc:
            # a damaged book admits nobody new silently: say so, start empty, keep the old file
            log.error("admission book unreadable; remote nodes must be approved again",
                      path=str(self.path), error=repr(exc))
            return False, {}
        records = {}
        for node_id, entry in (data.get("nodes") or {}).items():
            try:
                records[node_id] = Record(node_id=node_id, key=entry["key"],
                                          admitted_at=float(entry["admitted_at"]),
                                          via=str(entry.get("via", "approved")))
            except (KeyError, TypeError, ValueError):
                log.error("admission book entry unreadable; skipped", node=node_id)
        return False, records

    async def save(self) -> None:
        async with self._save_lock:
            data = {
                "version": 1,
                "nodes": {r.node_id: {"key": r.key, "admitted_at": r.admitted_at, "via": r.via}
                          for r in self.records.values()},
            }
            await asyncio.to_thread(write_atomically, self.path, json.dumps(data, indent=1))

    # --- the enrollment window ----------------------------------------------------------------

    def window_open(self) -> bool:
        return time.time() < self.window_until

    def open_window(self, minutes: float, reason: str = "herd enroll") -> float:
        self.window_until = time.time() + minutes * 60 if minutes > 0 else 0.0
        if self.window_until:
            until = time.strftime("%H:%M:%S", time.localtime(self.window_until))
            self.announce(f"enrollment window open until {until} ({reason}): nodes on other "
                          "machines that report now are admitted without approval")
        else:
            self.announce("enrollment window closed")
        log.info("enrollment window", until=self.window_until or None, reason=reason)
        return self.window_until

    # --- the owner's commands ------------------------------------------------------------------

    async def approve(self, node_id: str, expected_fingerprint: str | None = None) -> Record:
        pending = self.fleet.pending.get(node_id)
        if pending is None:
            raise Refused(404, f"no node {node_id!r} is waiting for approval")
        if expected_fingerprint and expected_fingerprint != pending.fingerprint:
            raise Refused(409, f"node {node_id!r} presents key {pending.fingerprint}, "
                               f"not {expected_fingerprint}: not approved")
        record = Record(node_id=node_id, key=pending.key, admitted_at=time.time(), via="approved")
        self.records[node_id] = record
        self.fleet.forget_pending(node_id)
        await self.save()
        log.info("node approved", node=node_id, key=record.fingerprint)
        return record

    async def remove(self, node_id: str) -> bool:
        """Revoke: forget the node's key and drop it from the registry. False if unknown."""
        record = self.records.pop(node_id, None)
        known = self.fleet.forget(node_id) or record is not None
        if record is not None:
            await self.save()
        if known:
            log.info("node removed", node=node_id)
        return known

    # --- one heartbeat -------------------------------------------------------------------------

    def _is_local(self, peer: str | None, sockname: str | None) -> bool:
        """A heartbeat from this machine: over loopback, or from one of its own addresses (a
        connection to one of our addresses from here has that address as its source)."""
        ip = _ip(peer or "")
        if ip is None:
            return False
        own = str(ip) == str(_ip(sockname or "")) or str(ip) in self.own_addresses
        return ip.is_loopback or own

    async def admit(
        self, hb: Heartbeat, raw: bytes, headers: Mapping[str, str], peer: str | None,
        sockname: str | None, *, secret_verified: bool, names: Sequence[str] = (),
    ) -> str:
        """How this heartbeat's node is admitted: ``local``, ``secret``, ``admitted`` or
        ``pending``; raises ``Refused`` with nothing changed otherwise. ``names``: what the
        agent called each endpoint (``endpoints.0``, or an older agent's fragment name), for
        the field an error points at."""
        local = self.is_local(peer, sockname)
        node_id = hb.node_id
        record = self.records.get(node_id)
        key = ""
        if record is not None:
            signature = headers.get(NODE_SIGNATURE_HEADER)
            problem = (
                auth.verify(record.key, signature, "POST", "/heartbeat", raw, self.nonces,
                            not_before=self.started, what="node key")
                if signature else "not signed with its node key"
            )
            if problem:
                raise Refused(401, f"unauthorized: node {node_id!r} is admitted with key "
                                   f"{record.fingerprint} and this heartbeat is {problem}; to "
                                   f"enroll it again run `herd nodes remove {node_id}`")
            kind = "admitted"
        elif secret_verified:
            kind = "secret"
        elif local:
            kind = "local"
        else:
            key = headers.get(NODE_KEY_HEADER, "")
            if not _KEY_SHAPE.fullmatch(key):
                raise Refused(401, "unauthorized: a node on another machine must present its "
                                   f"node key ({NODE_KEY_HEADER}) to be admitted; use a current "
                                   "herd-node, or a fleet secret (FLEET_SECRET) on both sides")
            kind = "enrolling" if self.window_open() else "pending"
        self._check_caps(hb, kind, key, names)
        if not hb.draining:
            for index, endpoint in enumerate(hb.endpoints):
                await self._check_url(endpoint.url, peer, local, _name(names, index) + ".url")
        if kind != "pending":
            self.fleet.forget_pending(node_id)
        if kind == "enrolling":
            self.records[node_id] = Record(node_id=node_id, key=key, admitted_at=time.time(),
                                           via="enrollment")
            await self.save()
            log.info("node enrolled", node=node_id, key=fingerprint(key), peer=peer)
            kind = "admitted"
        return kind

    def _check_caps(self, hb: Heartbeat, kind: str, key: str, names: Sequence[str]) -> None:
        fleet = self.fleet
        node_id = hb.node_id
        count = 0
        cap = int(self.config["FLEET_MAX_MODELS_PER_NODE"])
        for index, endpoint in enumerate(hb.endpoints):
            count += len(endpoint.models_available) + len(endpoint.models_loaded)
            if count > cap:
                raise Refused(400, f"invalid heartbeat: {count} models reported, more than this "
                                   f"router keeps per node (FLEET_MAX_MODELS_PER_NODE={cap})",
                              field=_name(names, index) + ".models_available")
        if kind == "pending":
            pending = fleet.pending.get(node_id)
            if pending is not None and pending.key != key:
                raise Refused(409, f"node id {node_id!r} is already waiting for approval with "
                                   f"another key ({pending.fingerprint}); pick another --node-id")
            live = fleet.nodes.get(node_id)
            if live is not None and live.status != "offline":
                raise Refused(409, f"node id {node_id!r} is in use by an admitted node; pick "
                                   "another --node-id")
            cap = int(self.config["FLEET_MAX_PENDING_NODES"])
            if pending is None and len(fleet.pending) >= cap:
                raise Refused(429, f"too many nodes are waiting for approval ({cap}, "
                                   "FLEET_MAX_PENDING_NODES); approve or remove some with "
                                   "`herd nodes`, or wait for silent ones to be forgotten")
            return
        cap = int(self.config["FLEET_MAX_NODES"])
        if node_id not in fleet.nodes and len(fleet.nodes) >= cap:
            raise Refused(503, f"the fleet is full: {cap} nodes (FLEET_MAX_NODES); offline ones "
                               "are forgotten after FLEET_EVICT_AFTER, or `herd nodes remove` one")

    async def _check_url(self, reported: str, peer: str | None, local: bool, field: str) -> None:
        problem = url_problem(reported if "://" in reported else f"http://{reported}")
        if problem is None:
            try:
                final = reachable_url(reported, peer)
            except ValueError as exc:
                problem = f"is not a valid URL ({exc})"
            else:
                problem = url_problem(final)
        if problem is not None:
            raise Refused(400, f"invalid heartbeat: {field} {reported!r} {problem}", field=field)
        if local:
            return  # a node on this machine may well serve on loopback
        parts = urlsplit(final)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = await self.resolver.addresses(host, port)
        except OSError as exc:
            raise Refused(400, f"invalid heartbeat: {field} {final!r}: {exc}",
                          field=field) from None
        for address in addresses:
            if self.is_own_loopback(address):
                raise Refused(400, f"invalid heartbeat: {field} {final!r} resolves to {address}, "
                                   "this router's own machine: a node on another machine cannot "
                                   "point the router at it", field=field)


def _name(names: Sequence[str], index: int) -> str:
    return names[index] if index < len(names) else f"endpoints[{index}]"


def _own_addresses() -> frozenset[str]:
    """This machine's addresses as its host name resolves, best effort. (A heartbeat sent to one
    of this machine's own addresses comes from that same address, which ``_is_local`` also
    accepts; psutil's interface list would cost the router 3-4 MB of memory for little more.)"""
    found: set[str] = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(str(info[4][0]).split("%", 1)[0])
    except OSError:
        pass
    return frozenset(str(ip) for ip in map(_ip, found) if ip is not None)


# --- the admin routes' guard -------------------------------------------------------------------


def presented_key(headers: Mapping[str, str]) -> str:
    auth_header = headers.get("Authorization", "")
    if auth_header[:7].lower() == "bearer ":
        return auth_header[7:].strip()
    return headers.get("X-API-Key", "").strip()


def admin_problem(admission: Admission, request: Any, *, write: bool,
                  clients: Any = None) -> tuple[int, str] | None:
    """Why this ``/fleet/*`` call may not proceed, or None. Loopback callers are the owner; from
    elsewhere the admin key (FLEET_ADMIN_KEY) is needed for writes, and for reads once it or
    client keys (``clients``, a ``herd_kernel.keys.Keys``: FLEET_API_KEYS) are set, when a client
    key or a dashboard session also reads. A key that is none of these is refused, loopback or
    not. Writes need a JSON body type, no foreign Origin and no cross-site Sec-Fetch-Site, so a
    web page cannot forge one."""
    if write:
        if request.content_type != "application/json":
            return 415, "admin calls need Content-Type: application/json"
        origin = request.headers.get("Origin")
        if origin and urlsplit(origin).netloc.lower() != request.host.lower():
            return 403, "cross-origin admin call refused"
        # a browser says where a call came from even when it sends no Origin
        if request.headers.get("Sec-Fetch-Site", "").lower() in ("cross-site", "same-site"):
            return 403, "cross-site admin call refused"
    admin_key = str(admission.config["FLEET_ADMIN_KEY"])
    key = presented_key(request.headers)
    if admin_key and key and hmac.compare_digest(key.encode(), admin_key.encode()):
        return None
    client_keys = clients is not None and clients.required
    reader = clients is not None and clients.any and clients.reader(request)
    if reader and not write:
        return None
    if key and not reader and (admin_key or client_keys):
        return 401, "unauthorized: wrong key"
    host = urlsplit(f"//{request.host}").hostname or ""
    by_address = host == "localhost" or _ip(host) is not None
    if admission.is_loopback_peer(request.remote) and by_address:
        # loopback, and addressed by IP or as localhost (a rebinding web page uses its own name)
        return None
    if not write and not admin_key and not client_keys:
        return None
    if admin_key:
        need = "an API key or the admin key" if client_keys and not write else "the admin key"
        return 401, f"unauthorized: this call needs {need} (Authorization: Bearer <key>)"
    if not write:
        return 401, "unauthorized: this call needs an API key (Authorization: Bearer <key>)"
    return 403, ("admin calls are accepted only from this machine (loopback) unless "
                 "FLEET_ADMIN_KEY is set")
