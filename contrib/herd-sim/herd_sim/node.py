"""One virtual Ollama machine: its state (disk, scheduler, faults, statistics), its aiohttp
application and its listening socket.

The socket is managed here rather than by ``aiohttp.web.TCPSite`` because the ``refuse`` fault
has to stop listening (so that connecting fails with ``ECONNREFUSED``) and listen again on the
same port later, while connections already open keep working.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import socket
import time
from collections import Counter
from datetime import datetime
from typing import Any, Self

import attrs
from aiohttp import web

from herd_sim.catalogue import CATALOGUE, GIB, REFERENCE_SIZE_BYTES, ModelSpec, NodeProfile, lookup
from herd_sim.compat_api import compat_routes
from herd_sim.faults import Dropped, Fault, FaultBoard, Reply, reset_connection
from herd_sim.native import native_routes
from herd_sim.openai_api import openai_error, openai_routes
from herd_sim.scheduler import Runner, Scheduler
from herd_sim.wire import (
    JSON_TYPE,
    TEXT_TYPE,
    far_future,
    go_json,
    local_from_epoch,
    parse_profile_keep_alive,
)

__all__ = ["NODE_KEY", "DiskModel", "SimNode"]

log = logging.getLogger("herd_sim")

# the fault drawn by the request being handled (each aiohttp request runs in its own task)
_REQUEST_FAULT: contextvars.ContextVar[Fault | None] = contextvars.ContextVar(
    "herd_sim_request_fault", default=None)

# what a runner crash looks like when Ollama reports it
RUNNER_ERROR = "llama runner process has terminated: exit status 2"


@attrs.define
class DiskModel:
    spec: ModelSpec
    modified_at: float  # epoch seconds


class _ResetProtocol(asyncio.Protocol):
    """Accepts a connection only to reset it (the counted form of the ``refuse`` fault)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        reset_connection(transport)


class SimNode:
    """A simulated Ollama server.

    ``time_scale`` multiplies every simulated duration (model loads, prompt evaluation, token
    decoding, downloads): 1.0 is real time, 0.01 is a hundred times faster, 0 is instant.
    ``keep_alive`` expiry and fault durations are wall-clock and not scaled.
    """

    def __init__(self, profile: NodeProfile, host: str = "127.0.0.1", port: int = 0,
                 time_scale: float = 1.0) -> None:
        if time_scale < 0:
            raise ValueError("time_scale must be >= 0")
        self.profile = profile
        self.host = host
        self.port = port
        self.time_scale = time_scale
        self.default_keep_alive = parse_profile_keep_alive(profile.keep_alive)
        now = time.time()
        self.disk: dict[str, DiskModel] = {}
        for name in profile.models:
            spec = CATALOGUE[lookup(name, CATALOGUE) or name]
            # a stable, plausible "pulled some days ago" per model
            days = int(hashlib.sha256(spec.name.encode()).hexdigest()[:4], 16) % 60 + 1
            self.disk[spec.name] = DiskModel(spec, now - days * 86400 - 3600)
        self._faults = FaultBoard(self._sync_listener)
        self.scheduler = self._new_scheduler()
        self._requests: Counter[str] = Counter()
        self._events: Counter[str] = Counter()
        self._max_in_flight: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._started = False

    def _new_scheduler(self) -> Scheduler:
        return Scheduler(self.profile, time_scale=self.time_scale,
                         consume_fault=self._faults.consume, on_event=self._on_event)

    # --- identity ------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __repr__(self) -> str:
        return f"<SimNode {self.name} {self.url}>"

    # --- lifecycle -----------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """The node's aiohttp application (usable with ``aiohttp_client`` too, minus ``refuse``)."""
        app = web.Application(middlewares=[self._middleware], client_max_size=256 * 1024**2)
        app[NODE_KEY] = self
        app.add_routes(native_routes())
        app.add_routes(openai_routes())
        app.add_routes(compat_routes())
        app.add_routes([
            web.post("/_sim/fault", self._control_set_fault),
            web.delete("/_sim/fault", self._control_clear_faults),
            web.get("/_sim/state", self._control_state),
            web.get("/_sim/hardware", self._control_hardware),
        ])
        return app

    async def start(self) -> None:
        """Listen on ``host:port`` (``port`` 0 picks a free one) and load ``profile.loaded``."""
        if self._started:
            raise RuntimeError(f"{self!r} already started")
        self._stopping = asyncio.Event()
        self._runner = web.AppRunner(self.make_app(), handler_cancellation=True,
                                     access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = self._bind()
        self.port = sock.getsockname()[1]
        self._server = await asyncio.get_running_loop().create_server(
            self._protocol_factory, sock=sock)
        self._started = True
        for name in self.profile.loaded:
            spec = CATALOGUE[lookup(name, CATALOGUE) or name]
            self.scheduler.preload(spec, min(self.profile.default_num_ctx, spec.context_length),
                                   self.default_keep_alive)
        self._faults.arm_timers()
        self._sync_listener()  # a refuse set before start()
        log.debug("herd-sim node %s listening on %s", self.name, self.url)

    async def stop(self) -> None:
        """Close the port, end every response in progress, unload everything. A stopped node
        can be started again (on the same port): like a rebooted machine, it keeps its disk."""
        if not self._started:
            return
        self._started = False
        self._stopping.set()
        self._close_listener()
        self.scheduler.close()
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._faults.clear()
        # memory is empty after a "reboot"; the disk (pulled models included) is kept
        self.scheduler = self._new_scheduler()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # SO_REUSEADDR (set by create_server on POSIX) lets "refuse" re-listen on the same port
        # while connections from before are still open or in TIME_WAIT
        sock = socket.create_server((self.host, self.port), family=family, backlog=1024)
        sock.setblocking(False)
        return sock

    def _protocol_factory(self) -> asyncio.Protocol:
        if self._faults.take_reset():
            return _ResetProtocol()
        assert self._runner is not None and self._runner.server is not None
        return self._runner.server()

    def _close_listener(self) -> None:
        if self._listen_task is not None:
            self._listen_task.cancel()
            self._listen_task = None
        if self._server is not None:
            # closes the listening socket at once; established connections are not affected
            self._server.close()
            self._server = None

    def _sync_listener(self) -> None:
        """Open or close the port to match the ``refuse`` fault (runs on every fault change)."""
        if not self._started:
            return
        closed = self._faults.refuse_mode() == "closed"
        if closed:
            self._close_listener()
        elif self._server is None and self._listen_task is None:
            try:
                # bind and listen synchronously: a client connecting right after clear_faults()
                # waits in the backlog instead of being refused
                sock = self._bind()
            except OSError as err:
                log.warning("herd-sim %s: cannot listen on %s again yet: %s", self.name,
                            self.port, err)
                sock = None
            self._listen_task = asyncio.get_running_loop().create_task(self._serve(sock))

    async def _serve(self, sock: socket.socket | None) -> None:
        try:
            while sock is None:  # the port was briefly busy: keep trying
                await asyncio.sleep(0.05)
                try:
                    sock = self._bind()
                except OSError:
                    sock = None
            try:
                self._server = await asyncio.get_running_loop().create_server(
                    self._protocol_factory, sock=sock)
            except BaseException:
                sock.close()
                raise
        finally:
            # a quick refuse/clear cycle may already have started a newer listen task
            if self._listen_task is asyncio.current_task():
                self._listen_task = None

    # --- faults --------------------------------------------------------------------------------

    def set_fault(self, fault: Fault) -> None:
        """Inject ``fault`` (it replaces an active fault of the same kind)."""
        self._faults.set(fault)

    def clear_faults(self) -> None:
        """Remove every fault: the port listens again and stalled responses resume."""
        self._faults.clear()

    @property
    def faults(self) -> tuple[Fault, ...]:
        return self._faults.faults

    def slow_load_fault(self, path: str) -> Fault | None:
        return self._faults.slow_load_for(path)

    def reply(self, request: web.Request) -> Reply:
        """The response writer for ``request`` (it carries the request's mid-response fault)."""
        return Reply(request, _REQUEST_FAULT.get(), self._faults, self._stopping)

    # --- models --------------------------------------------------------------------------------

    def disk_model(self, name: str) -> ModelSpec | None:
        key = lookup(name, self.disk)
        return self.disk[key].spec if key else None

    def add_to_disk(self, spec: ModelSpec) -> None:
        self.disk[spec.name] = DiskModel(spec, time.time())

    def remove_from_disk(self, spec: ModelSpec) -> None:
        self.disk.pop(spec.name, None)
        self.scheduler.expire(spec.name)

    def loaded_models(self) -> list[tuple[str, int, datetime]]:
        """``(name, context_length, expires_at)`` per model in memory, ``/api/ps`` order.
        A model kept forever has a far-future ``expires_at`` (as Ollama shows it)."""
        return [(r.spec.name, r.num_ctx, self._expires(r)) for r in self.scheduler.loaded()]

    @staticmethod
    def _expires(runner: Runner) -> datetime:
        return far_future() if runner.expires_at is None else local_from_epoch(runner.expires_at)

    @property
    def memory_used_bytes(self) -> int:
        """OS reservation plus every loaded or loading model."""
        return self.profile.reserved_bytes + self.scheduler.used_bytes

    def decode_rate(self, spec: ModelSpec, active: int) -> float:
        """Tokens per simulated second for one request on ``spec`` with ``active`` requests
        sharing the model: bigger models are proportionally slower, parallel requests slow
        each other down a little."""
        rate = self.profile.tokens_per_s * REFERENCE_SIZE_BYTES / spec.size_bytes
        return rate / (1 + self.profile.parallel_slowdown * max(0, active - 1))

    async def sleep(self, simulated_s: float) -> None:
        if self.time_scale > 0 and simulated_s > 0:
            await asyncio.sleep(simulated_s * self.time_scale)
        else:
            await asyncio.sleep(0)  # still yield, so "instant" nodes interleave requests

    # --- statistics ----------------------------------------------------------------------------

    def _on_event(self, event: str, model: str) -> None:
        self._events[event] += 1
        if event == "start":
            runner = self.scheduler.runners.get(model)
            active = runner.active if runner else 1
            self._max_in_flight[model] = max(self._max_in_flight.get(model, 0), active)

    @property
    def stats(self) -> dict[str, Any]:
        """A snapshot: ``requests`` per path, ``in_flight`` (requests holding a model slot),
        ``queued``, ``in_flight_by_model``, ``max_in_flight`` per model, ``loads``, ``unloads``,
        ``evictions``, ``faults_triggered`` per kind."""
        snap = self.scheduler.snapshot()
        return {
            "requests": dict(self._requests),
            "in_flight": sum(snap["in_flight_by_model"].values()),
            "queued": snap["queued"],
            "in_flight_by_model": snap["in_flight_by_model"],
            "max_in_flight": dict(self._max_in_flight),
            "loads": self._events["load"],
            "unloads": self._events["unload"],
            "evictions": self._events["evict"],
            "faults_triggered": dict(self._faults.triggered),
        }

    def hardware(self) -> dict[str, Any]:
        total = self.profile.memory_bytes
        used = self.memory_used_bytes
        return {
            "memory_total_gb": round(total / GIB, 3),
            "memory_used_gb": round(used / GIB, 3),
            "memory_available_gb": round((total - used) / GIB, 3),
            "cores": self.profile.cores,
            "chip": self.profile.chip,
            "tokens_per_s": self.profile.tokens_per_s,
            "profile": self.profile.name,
        }

    def state(self) -> dict[str, Any]:
        profile = attrs.asdict(self.profile)
        profile["models"] = list(profile["models"])
        profile["loaded"] = list(profile["loaded"])
        runners = sorted(self.scheduler.runners.values(), key=lambda r: r.spec.name)
        return {
            "name": self.name,
            "url": self.url,
            "time_scale": self.time_scale,
            "profile": profile,
            "disk": sorted(self.disk),
            "loaded": [{"name": r.spec.name, "state": r.state, "context_length": r.num_ctx,
                        "size": r.spec.size_bytes, "active": r.active,
                        "expires_at": self._expires(r).isoformat()} for r in runners],
            "memory_total_gb": round(self.profile.memory_bytes / GIB, 3),
            "memory_used_gb": round(self.memory_used_bytes / GIB, 3),
            "faults": [f.to_dict() for f in self.faults],
            "stats": self.stats,
        }

    # --- HTTP plumbing -------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_sim/"):
            return await self._route_errors(request, handler)
        if request.match_info.http_exception is None:
            route = request.match_info.route.resource
            self._requests[route.canonical if route is not None else path] += 1
        fault = self._faults.take_request_fault(path)
        token = _REQUEST_FAULT.set(fault)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if fault is not None and fault.kind == "http500":
                await request.read()
                body = openai_error(500, RUNNER_ERROR) if path.startswith("/v1/") \
                    else {"error": RUNNER_ERROR}
                return web.Response(status=500, body=go_json(body).encode(),
                                    headers={"Content-Type": JSON_TYPE})
            if fault is not None and fault.kind == "drop_before_first_byte":
                await request.read()
                if request.transport is not None:
                    request.transport.close()  # FIN before any status line
                return web.Response()  # never sent: the transport is closing
            try:
                return await self._route_errors(request, handler)
            except Dropped:
                return web.Response()  # the connection is already gone
        finally:
            _REQUEST_FAULT.reset(token)
            if task is not None:
                self._tasks.discard(task)

    @staticmethod
    async def _route_errors(request: web.Request, handler: Any) -> web.StreamResponse:
        # gin's plain-text answers for unknown routes and wrong methods
        try:
            return await handler(request)
        except web.HTTPMethodNotAllowed:
            return web.Response(status=405, text="405 method not allowed",
                                headers={"Content-Type": TEXT_TYPE})
        except web.HTTPNotFound:
            if request.match_info.http_exception is None:
                raise
            return web.Response(status=404, text="404 page not found",
                                headers={"Content-Type": TEXT_TYPE})

    async def _control_set_fault(self, request: web.Request) -> web.Response:
        try:
            fault = Fault.from_dict(await request.json())
        except (ValueError, TypeError) as err:
            return web.json_response({"error": str(err)}, status=400)
        self.set_fault(fault)
        return web.json_response({"faults": [f.to_dict() for f in self.faults]})

    async def _control_clear_faults(self, _request: web.Request) -> web.Response:
        self.clear_faults()
        return web.json_response({"faults": []})

    async def _control_state(self, _request: web.Request) -> web.Response:
        return web.json_response(self.state())

    async def _control_hardware(self, _request: web.Request) -> web.Response:
        return web.json_response(self.hardware())


NODE_KEY: web.AppKey[SimNode] = web.AppKey("herd_sim_node", SimNode)
