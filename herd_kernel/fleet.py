"""The fleet registry: node states built from heartbeats, online / degraded / offline by age,
and the router's own in-flight accounting per ``node:model``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import attrs

from herd_kernel.models import AvailableModel, Heartbeat, NodeState, NodeStatus, normalize_model

StatusListener = Callable[[str, "str | None", str], None]


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def reachable_url(reported: str, peer_ip: str | None) -> str:
    """The URL the router should use for a node's Ollama.

    A node reports the URL it uses itself (often ``http://localhost:11434``). When the heartbeat
    came from another machine, a loopback host in that URL means "me", so it is replaced by the
    address the heartbeat came from.
    """
    parts = urlsplit(reported if "://" in reported else f"http://{reported}")
    host = parts.hostname or ""
    if peer_ip and _is_loopback(host) and not _is_loopback(peer_ip):
        port = f":{parts.port}" if parts.port else ""
        peer = f"[{peer_ip}]" if ":" in peer_ip else peer_ip
        parts = parts._replace(netloc=f"{peer}{port}")
    return urlunsplit(parts).rstrip("/")


@attrs.define(kw_only=True, slots=True)
class QueueCounters:
    """Per node:model counts. Issue-level queues build on these; the numbers are always true."""

    pending: int = 0
    in_flight: int = 0
    completed: int = 0
    failed: int = 0


class NodeConflict(Exception):
    """Another agent already holds this node id and is alive."""


class Fleet:
    """In-memory registry. All mutation happens on the event loop; reads never await."""

    def __init__(
        self,
        *,
        degraded_after: float = 15.0,
        offline_after: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.degraded_after = degraded_after
        self.offline_after = offline_after
        self.clock = clock
        self.nodes: dict[str, NodeState] = {}
        self.queues: dict[tuple[str, str], QueueCounters] = {}
        self.node_in_flight: dict[str, int] = {}
        self.listeners: list[StatusListener] = []
        self.version = 0  # bumped on every change that could alter a routing decision

    # --- heartbeats ----------------------------------------------------------------------------

    def apply_heartbeat(self, hb: Heartbeat, peer_ip: str | None = None) -> NodeState:
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
        loaded = {}
        available = {}
        url = ""
        if hb.ollama is not None:
            url = reachable_url(hb.ollama.url, peer_ip)
            loaded = {normalize_model(m.name): m for m in hb.ollama.models_loaded}
            available = {normalize_model(m.name): m for m in hb.ollama.models_available}
        if state is None:
            state = NodeState(node_id=hb.node_id, heartbeat=hb, first_seen=time.time())
            self.nodes[hb.node_id] = state
        else:
            for name in state.loaded.keys() - loaded.keys():
                state.unloaded_at[name] = now
            for name in loaded.keys() & state.unloaded_at.keys():
                del state.unloaded_at[name]
        state.heartbeat = hb
        state.ollama_url = url
        state.loaded = loaded
        state.available = available
        state.last_seen = now
        state.last_seen_wall = time.time()
        state.heartbeats += 1
        state.status = "offline" if hb.draining else "online"
        self.version += 1
        if old_status != state.status:
            self._emit(hb.node_id, old_status, state.status)
        return state

    def sweep(self) -> None:
        """Age nodes: degraded after ``degraded_after`` s of silence, offline after ``offline_after``."""
        now = self.clock()
        for state in self.nodes.values():
            if state.status == "offline":
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
                self.version += 1
                self._emit(state.node_id, old, new)

    async def run_sweeper(self, period: float | None = None) -> None:
        period = period or max(0.05, min(1.0, self.degraded_after / 5))
        while True:
            await asyncio.sleep(period)
            self.sweep()

    def _emit(self, node_id: str, old: str | None, new: str) -> None:
        for listener in self.listeners:
            listener(node_id, old, new)

    def add_available(self, node_id: str, model: AvailableModel) -> None:
        """Note a model the router itself just put on a node's disk (auto-pull), before the
        node's next heartbeat confirms it."""
        state = self.nodes.get(node_id)
        if state is not None:
            state.available.setdefault(normalize_model(model.name), model)
            self.version += 1

    # --- reads ---------------------------------------------------------------------------------

    def routable(self) -> Iterator[NodeState]:
        return (n for n in self.nodes.values() if n.routable)

    def holders(self, model_key: str) -> list[NodeState]:
        """Every known node (any status) that has the model loaded or on disk."""
        return [n for n in self.nodes.values() if model_key in n.loaded or model_key in n.available]

    # --- in-flight accounting ------------------------------------------------------------------

    def counters(self, node_id: str, model_key: str) -> QueueCounters:
        key = (node_id, model_key)
        counters = self.queues.get(key)
        if counters is None:
            counters = self.queues[key] = QueueCounters()
        return counters

    def started(self, node_id: str, model_key: str) -> None:
        self.counters(node_id, model_key).in_flight += 1
        self.node_in_flight[node_id] = self.node_in_flight.get(node_id, 0) + 1

    def finished(self, node_id: str, model_key: str, ok: bool) -> None:
        counters = self.counters(node_id, model_key)
        counters.in_flight -= 1
        if ok:
            counters.completed += 1
        else:
            counters.failed += 1
        self.node_in_flight[node_id] = self.node_in_flight.get(node_id, 1) - 1

    @property
    def requests_active(self) -> int:
        return sum(self.node_in_flight.values())
