"""The fleet registry: node states built from heartbeats, online / degraded / offline by age,
nodes waiting for admission (kept apart, so nothing that routes ever sees them), eviction of
long-silent nodes, and the router's own in-flight accounting per ``node:model``.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs

from herd_kernel.auth import is_loopback
from herd_kernel.models import (
    AvailableModel,
    Endpoint,
    Heartbeat,
    LoadedModel,
    NodeState,
    NodeStatus,
    normalize_model,
)

StatusListener = Callable[[str, "str | None", str], None]
ModelListener = Callable[[str, str, str], None]  # ("model_loaded" | "model_unloaded", node, model)


def reachable_url(reported: str, peer_ip: str | None) -> str:
    """The URL the router should use for an engine on a node.

    A node reports the URL it uses itself (often ``http://localhost:11434``). When the heartbeat
    came from another machine, a loopback host in that URL means "me", so it is replaced by the
    address the heartbeat came from.
    """
    parts = urlsplit(reported if "://" in reported else f"http://{reported}")
    host = parts.hostname or ""
    if peer_ip and is_loopback(host) and not is_loopback(peer_ip):
        port = f":{parts.port}" if parts.port else ""
        peer = f"[{peer_ip}]" if ":" in peer_ip else peer_ip
        parts = parts._replace(netloc=f"{peer}{port}")
    return urlunsplit(parts).rstrip("/")


def _index(hb: Heartbeat, peer_ip: str | None) -> tuple[
    tuple[Endpoint, ...], dict[str, LoadedModel], dict[str, AvailableModel], dict[str, Endpoint]
]:
    """A heartbeat's endpoints with URLs the router can reach, every model they list (loaded and
    on disk) by normalized name, and which endpoint serves each: the first that has it in memory,
    else the first that lists it."""
    endpoints = tuple(
        e if (url := reachable_url(e.url, peer_ip)) == e.url else attrs.evolve(e, url=url)
        for e in hb.endpoints
    )
    loaded: dict[str, LoadedModel] = {}
    available: dict[str, AvailableModel] = {}
    serving: dict[str, Endpoint] = {}
    for endpoint in endpoints:
        for m in endpoint.models_loaded:
            key = normalize_model(m.name)
            if key not in loaded:
                loaded[key] = m
                serving[key] = endpoint
        for a in endpoint.models_available:
            key = normalize_model(a.name)
            available.setdefault(key, a)
            serving.setdefault(key, endpoint)
    return endpoints, loaded, available, serving


class Lane:
    """One ``node:model`` queue: its concurrency limit, the requests running there and those
    waiting for a slot (oldest first), and true totals. ``queues.QueueManager`` moves requests
    through lanes; the scorer reads ``in_flight`` and ``pending``."""

    __slots__ = ("node_id", "model", "limit", "in_flight", "waiting", "completed", "failed",
                 "reaped", "moved", "abandoned", "state", "busy_area", "busy_at", "last_used")

    def __init__(self, node_id: str, model: str) -> None:
        self.node_id = node_id
        self.model = model
        self.limit = 1
        self.in_flight = 0
        self.waiting: collections.deque[Any] = collections.deque()
        self.completed = 0
        self.failed = 0
        self.reaped = 0  # in flight with no progress past the stale timeout, cleared by the reaper
        self.moved = 0  # waiting requests the rebalancer sent to another node
        self.abandoned = 0  # clients that left while waiting here
        self.state: dict[str, Any] = {}  # lane policies' own, by policy name
        # the integral of in_flight over time, so a request's mean concurrency is a subtraction
        self.busy_area = 0.0
        self.busy_at = time.monotonic()
        self.last_used = 0.0  # wall clock when a request last started here (0: never)

    def busy_integral(self, now: float) -> float:
        """Request-seconds run in this lane up to ``now`` (monotonic)."""
        return self.busy_area + self.in_flight * (now - self.busy_at)

    def _account(self) -> None:
        now = time.monotonic()
        self.busy_area += self.in_flight * (now - self.busy_at)
        self.busy_at = now

    @property
    def pending(self) -> int:
        return len(self.waiting)

    @property
    def free(self) -> int:
        return self.limit - self.in_flight


@dataclass(slots=True)
class PendingNode:
    """A node on another machine that has reported but is not admitted: what the owner needs to
    decide (who, from where, with which key), nothing more, so a flood of them stays small."""

    node_id: str
    key: str
    fingerprint: str
    peer: str
    hostname: str
    url: str
    agent_version: str
    models: int
    first_seen: float  # wall clock
    last_seen: float  # monotonic
    heartbeats: int = 1


class NodeConflict(Exception):
    """Another agent already holds this node id and is alive."""


class Fleet:
    """In-memory registry. All mutation happens on the event loop; reads never await."""

    def __init__(
        self,
        *,
        degraded_after: float = 15.0,
        offline_after: float = 30.0,
        evict_after: float = 3600.0,
        pending_evict_after: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.degraded_after = degraded_after
        self.offline_after = offline_after
        self.evict_after = evict_after  # silent this long, a node is forgotten (0: never)
        self.pending_evict_after = pending_evict_after
        self.clock = clock
        self.nodes: dict[str, NodeState] = {}
        self.pending: dict[str, PendingNode] = {}  # never routed to; see herd_kernel.admission
        self.queues: dict[tuple[str, str], Lane] = {}
        self.node_in_flight: dict[str, int] = {}
        self.listeners: list[StatusListener] = []
        # told when a heartbeat's loaded models differ from the node's previous heartbeat's (not
        # on its first: what a node already held is not a load)
        self.model_listeners: list[ModelListener] = []
        self._reported: dict[str, frozenset[str]] = {}  # node -> loaded models, as last reported
        self.watchers: list[Callable[[], None]] = []  # called after every change below
        self.version = 0  # bumped on every change that could alter a routing decision

    # --- heartbeats ----------------------------------------------------------------------------

    def apply_heartbeat(
        self, hb: Heartbeat, peer_ip: str | None = None, admission: str = ""
    ) -> NodeState:
        now = self.clock()
        state = self.nodes.get(hb.node_id)
        old_status: str | None = state.status if state is not None else None
        if (
            state is not None
            and state.status != "offline"
            and state.heartbeat.instance_id
            and hb.instance_id != state.heartbeat.instance_id
        ):
            # a second machine (or a forgery) claims a live node's name: refuse, change nothing
            raise NodeConflict(
                f"node id {hb.node_id!r} is in use by another agent; pick another --node-id"
            )
        if hb.draining and not hb.endpoints and state is not None:
            # a node going away keeps what it had: requests for its models wait for it to return
            # (or for FLEET_HOLD_TIMEOUT) instead of hearing that the model does not exist
            endpoints, loaded, available, serving = \
                state.endpoints, state.loaded, state.available, state.serving
        else:
            endpoints, loaded, available, serving = _index(hb, peer_ip)
            self._note_loaded(hb.node_id, frozenset(loaded))
        if state is None:
            state = NodeState(node_id=hb.node_id, heartbeat=hb, first_seen=time.time())
            self.nodes[hb.node_id] = state
        else:
            for name in state.loaded.keys() - loaded.keys():
                state.unloaded_at[name] = now
            for name in loaded.keys() & state.unloaded_at.keys():
                del state.unloaded_at[name]
        state.heartbeat = hb
        state.admission = admission or state.admission
        state.endpoints = endpoints
        state.loaded = loaded
        state.available = available
        state.serving = serving
        state.last_seen = now
        state.last_seen_wall = time.time()
        state.heartbeats += 1
        state.status = "offline" if hb.draining else "online"
        if old_status != state.status:
            self._emit(hb.node_id, old_status, state.status)
        self._changed()
        return state

    def _note_loaded(self, node_id: str, loaded: frozenset[str]) -> None:
        before = self._reported.get(node_id)
        self._reported[node_id] = loaded
        if before is None or before == loaded or not self.model_listeners:
            return
        changes = [("model_unloaded", m) for m in sorted(before - loaded)]
        changes += [("model_loaded", m) for m in sorted(loaded - before)]
        for kind, model in changes:
            for listener in self.model_listeners:
                listener(kind, node_id, model)

    def apply_pending(
        self, hb: Heartbeat, peer_ip: str | None, key: str, fingerprint: str
    ) -> PendingNode | None:
        """Note a heartbeat from a node waiting for admission (None: it left, so it is dropped).
        The caller has checked the cap and that the key matches an earlier one."""
        if hb.draining:
            self.forget_pending(hb.node_id)
            return None
        url, models = "", sum(len(e.models_available) for e in hb.endpoints)
        if hb.endpoints:
            url = reachable_url(hb.endpoints[0].url, peer_ip)
        pending = self.pending.get(hb.node_id)
        if pending is None:
            pending = self.pending[hb.node_id] = PendingNode(
                node_id=hb.node_id, key=key, fingerprint=fingerprint, peer=peer_ip or "",
                hostname=hb.hostname[:255], url=url, agent_version=hb.agent_version[:64],
                models=models, first_seen=time.time(), last_seen=self.clock(), heartbeats=0,
            )
            self._emit(hb.node_id, None, "pending")
        pending.peer, pending.url, pending.models = peer_ip or "", url, models
        pending.hostname, pending.agent_version = hb.hostname[:255], hb.agent_version[:64]
        pending.last_seen = self.clock()
        pending.heartbeats += 1
        return pending

    def forget_pending(self, node_id: str) -> bool:
        return self.pending.pop(node_id, None) is not None

    def forget(self, node_id: str) -> bool:
        """Drop a node (pending or not) and its idle lanes; requests running there finish."""
        state = self.nodes.pop(node_id, None)
        self._reported.pop(node_id, None)
        known = self.forget_pending(node_id) or state is not None
        if state is not None:
            for key in [k for k, lane in self.queues.items()
                        if k[0] == node_id and not lane.in_flight and not lane.waiting]:
                del self.queues[key]
            if not self.node_in_flight.get(node_id):
                self.node_in_flight.pop(node_id, None)
            self._emit(node_id, state.status, "removed")
            self._changed()
        return known

    def sweep(self) -> None:
        """Age nodes: degraded after ``degraded_after`` s of silence, offline after
        ``offline_after``; forget offline ones after ``evict_after`` and pending ones after
        ``pending_evict_after`` (so ids that stop reporting do not accumulate)."""
        now = self.clock()
        if self.pending_evict_after:
            for pending in [p for p in self.pending.values()
                            if now - p.last_seen > self.pending_evict_after]:
                del self.pending[pending.node_id]
        evict = []
        for state in self.nodes.values():
            if state.status == "offline":
                if self.evict_after and now - state.last_seen > self.evict_after \
                        and not self.node_in_flight.get(state.node_id):
                    evict.append(state.node_id)
                continue
            silent = now - state.last_seen
            new: NodeStatus = state.status
            if silent > self.offline_after:
                new = "offline"
            elif silent > self.degraded_after:
                new = "degraded"
            if new != state.status:
                old = state.status
                state.status = new
                self._emit(state.node_id, old, new)
                self._changed()
        for node_id in evict:
            self.forget(node_id)

    async def run_sweeper(self, period: float | None = None) -> None:
        period = period or max(0.05, min(1.0, self.degraded_after / 5))
        while True:
            await asyncio.sleep(period)
            self.sweep()

    def _changed(self) -> None:
        self.version += 1
        for watcher in self.watchers:
            watcher()

    def _emit(self, node_id: str, old: str | None, new: str) -> None:
        for listener in self.listeners:
            listener(node_id, old, new)

    def add_available(self, node_id: str, model: AvailableModel, kind: str = "") -> None:
        """Note a model the router itself just put on a node's disk (auto-pull) through its
        endpoint of ``kind`` (else its first), before the node's next heartbeat confirms it."""
        state = self.nodes.get(node_id)
        if state is None:
            return
        key = normalize_model(model.name)
        state.available.setdefault(key, model)
        endpoint = state.endpoint(kind) if kind else None
        endpoint = endpoint or (state.endpoints[0] if state.endpoints else None)
        if endpoint is not None:
            state.serving.setdefault(key, endpoint)
        self._changed()

    def add_loaded(self, node_id: str, model_key: str) -> None:
        """Note a model the router itself just loaded on a node (pre-warm), before the node's
        next heartbeat confirms it (or forgets it again)."""
        state = self.nodes.get(node_id)
        if state is None or model_key in state.loaded:
            return
        available = state.available.get(model_key)
        state.loaded[model_key] = LoadedModel(
            name=available.name if available else model_key,
            size_bytes=available.size_bytes if available else 0,
            details=available.details if available else {},
        )
        state.unloaded_at.pop(model_key, None)
        self._changed()

    def remove_loaded(self, node_id: str, model_key: str) -> None:
        """Note a model the router itself just unloaded from a node (``keep_alive: 0``), before
        the node's next heartbeat confirms it: the counterpart of ``add_loaded``."""
        state = self.nodes.get(node_id)
        if state is None or state.loaded.pop(model_key, None) is None:
            return
        state.unloaded_at[model_key] = self.clock()
        self._changed()

    def forget_model(self, node_id: str, model_key: str) -> None:
        """A node answered that it does not have ``model_key`` (deleted since its last heartbeat):
        stop offering it there until a heartbeat says otherwise."""
        self.remove_loaded(node_id, model_key)
        state = self.nodes.get(node_id)
        if state is not None and state.available.pop(model_key, None) is not None:
            if model_key not in state.loaded:
                state.serving.pop(model_key, None)
            self._changed()

    # --- reads ---------------------------------------------------------------------------------

    def routable(self) -> Iterator[NodeState]:
        return (n for n in self.nodes.values() if n.routable)

    def holders(self, model_key: str) -> list[NodeState]:
        """Every known node (any status) that has the model loaded or on disk."""
        return [n for n in self.nodes.values() if model_key in n.loaded or model_key in n.available]

    # --- in-flight accounting ------------------------------------------------------------------

    def lane(self, node_id: str, model_key: str) -> Lane:
        key = (node_id, model_key)
        lane = self.queues.get(key)
        if lane is None:
            lane = self.queues[key] = Lane(node_id, model_key)
        return lane

    def started(self, lane: Lane) -> None:
        lane._account()
        lane.last_used = time.time()
        lane.in_flight += 1
        self.node_in_flight[lane.node_id] = self.node_in_flight.get(lane.node_id, 0) + 1

    def finished(self, lane: Lane, ok: bool | None) -> None:
        """``ok`` None: the slot was given back unused (its client left before dispatch)."""
        lane._account()
        lane.in_flight -= 1
        if ok:
            lane.completed += 1
        elif ok is not None:
            lane.failed += 1
        self.node_in_flight[lane.node_id] = self.node_in_flight.get(lane.node_id, 1) - 1

    @property
    def requests_active(self) -> int:
        return sum(self.node_in_flight.values())
