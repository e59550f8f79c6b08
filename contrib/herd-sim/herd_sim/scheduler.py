"""Ollama's scheduler in miniature: which models are in memory, loading them (taking time and
memory), evicting idle ones, ``keep_alive`` expiry, ``num_parallel`` slots with a FIFO queue, and
reloads when a request asks for a different ``num_ctx``.

This is pure asyncio with no HTTP: the node's handlers ask for a ``Lease`` on a model and give it
back when the response is done.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs

from herd_sim.catalogue import ModelSpec, NodeProfile
from herd_sim.faults import Fault
from herd_sim.wire import ApiError, human_bytes

__all__ = ["Lease", "Runner", "Scheduler"]

QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"
SLOW_LOAD_FACTOR = 10.0


@attrs.define(eq=False)
class Runner:
    """One loaded (or loading) model, as ``/api/ps`` lists it."""

    spec: ModelSpec
    num_ctx: int
    state: str = "loading"  # loading -> ready; removed from the scheduler when unloaded
    active: int = 0
    # wall-clock epoch seconds; None = never (negative keep_alive)
    expires_at: float | None = None
    keep_alive: float | None = 300.0
    last_used: float = attrs.field(factory=time.monotonic)
    load_s: float = 0.0
    timer: asyncio.TimerHandle | None = None
    task: asyncio.Task[None] | None = None
    unload_when_idle: bool = False

    @property
    def key(self) -> str:
        return self.spec.name


@attrs.define(eq=False)
class _Waiter:
    spec: ModelSpec
    num_ctx: int
    future: asyncio.Future[Runner]
    slow_load: Fault | None
    keep_alive: float | None = 300.0
    enqueued: float = attrs.field(factory=time.monotonic)
    waited_load_s: float = 0.0


@attrs.frozen
class Lease:
    """A slot on a runner. ``load_duration`` is in simulated seconds (scheduling + loading)."""

    runner: Runner
    load_duration: float


class Scheduler:
    """The model runtime of one node."""

    def __init__(self, profile: NodeProfile, *, time_scale: float,
                 consume_fault: Callable[[Fault], bool],
                 on_event: Callable[[str, str], None]) -> None:
        self.profile = profile
        self.time_scale = time_scale
        self.runners: dict[str, Runner] = {}
        self._queue: deque[_Waiter] = deque()
        self._consume_fault = consume_fault
        self._on_event = on_event  # (load|unload|evict|start|end, model)
        self._closed = False

    # --- memory --------------------------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        """Memory held by models (loading ones included: their memory is reserved)."""
        return sum(r.spec.size_bytes for r in self.runners.values())

    @property
    def queued(self) -> int:
        return len(self._queue)

    def sleep_for(self, seconds: float) -> float:
        return seconds * self.time_scale

    # --- public --------------------------------------------------------------------------------

    def preload(self, spec: ModelSpec, num_ctx: int, keep_alive: float | None) -> None:
        """Put a model in memory at once (profiles' ``loaded`` at start)."""
        runner = Runner(spec=spec, num_ctx=num_ctx, state="ready")
        self.runners[spec.name] = runner
        self._touch(runner, keep_alive)
        self._on_event("load", spec.name)

    async def acquire(self, spec: ModelSpec, num_ctx: int, keep_alive: float | None, *,
                      slow_load: Fault | None = None) -> Lease:
        """Wait for a slot on ``spec`` with ``num_ctx`` (loading or reloading it as needed).

        Raises ``ApiError`` 503 when the queue is full and 500 when the model cannot fit.
        If the caller is cancelled (client went away) while queued, it leaves the queue.
        """
        if self._closed:
            raise ApiError(500, "server shutting down")
        if len(self._queue) >= self.profile.max_queue:
            raise ApiError(503, QUEUE_FULL)
        started = time.monotonic()
        waiter = _Waiter(spec=spec, num_ctx=num_ctx,
                         future=asyncio.get_running_loop().create_future(), slow_load=slow_load,
                         keep_alive=keep_alive)
        self._queue.append(waiter)
        self._dispatch()
        try:
            runner = await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled() \
                    and waiter.future.exception() is None:
                self.release(waiter.future.result(), keep_alive)
            elif waiter in self._queue:
                self._queue.remove(waiter)
                self._dispatch()
            raise
        # keep the runner from expiring while it works; release() restarts the clock
        if runner.timer is not None:
            runner.timer.cancel()
            runner.timer = None
        runner.keep_alive = keep_alive
        runner.expires_at = None if keep_alive is None else time.time() + keep_alive
        waited = time.monotonic() - started
        simulated = waited / self.time_scale if self.time_scale > 0 else 0.0
        return Lease(runner, max(simulated, waiter.waited_load_s) + 0.0005)

    def release(self, runner: Runner, keep_alive: float | None) -> None:
        """Give the slot back; the keep-alive clock starts when the runner is idle."""
        runner.active -= 1
        runner.last_used = time.monotonic()
        self._on_event("end", runner.key)
        if runner.active == 0 and self.runners.get(runner.key) is runner:
            if runner.unload_when_idle or keep_alive == 0:
                self._unload(runner)
            else:
                self._touch(runner, keep_alive)
        self._dispatch()

    async def ensure_loaded(self, spec: ModelSpec, num_ctx: int, keep_alive: float | None, *,
                            slow_load: Fault | None = None) -> Lease:
        """Load without running anything (empty prompt): acquire then release at once."""
        lease = await self.acquire(spec, num_ctx, keep_alive, slow_load=slow_load)
        self.release(lease.runner, keep_alive)
        return lease

    def expire(self, name: str) -> None:
        """``keep_alive: 0`` with no prompt: unload now, or as soon as the model is idle."""
        runner = self.runners.get(name)
        if runner is None:
            return
        if runner.active == 0 and runner.state == "ready":
            self._unload(runner)
        else:
            runner.unload_when_idle = True
        self._dispatch()

    def loaded(self) -> list[Runner]:
        """Ready runners, most distant expiry first (the ``/api/ps`` order)."""
        ready = [r for r in self.runners.values() if r.state == "ready"]
        return sorted(ready, key=lambda r: float("inf") if r.expires_at is None else r.expires_at,
                      reverse=True)

    def close(self) -> None:
        """Stop: fail the queue, cancel loads and timers."""
        self._closed = True
        for waiter in self._queue:
            if not waiter.future.done():
                waiter.future.set_exception(ApiError(500, "server shutting down"))
        self._queue.clear()
        for runner in self.runners.values():
            if runner.timer is not None:
                runner.timer.cancel()
            if runner.task is not None:
                runner.task.cancel()

    def snapshot(self) -> dict[str, Any]:
        return {"queued": len(self._queue),
                "in_flight_by_model": {k: r.active for k, r in self.runners.items() if r.active}}

    # --- internals -----------------------------------------------------------------------------

    def _touch(self, runner: Runner, keep_alive: float | None) -> None:
        if runner.timer is not None:
            runner.timer.cancel()
            runner.timer = None
        runner.keep_alive = keep_alive
        if keep_alive is None:
            runner.expires_at = None
            return
        runner.expires_at = time.time() + keep_alive
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        # the reaper: one timer per idle runner, unloading it when its keep_alive runs out
        runner.timer = loop.call_later(keep_alive, self._expired, runner)

    def _expired(self, runner: Runner) -> None:
        runner.timer = None
        if self.runners.get(runner.key) is runner and runner.active == 0 \
                and runner.state == "ready":
            self._unload(runner)
            self._dispatch()

    def _unload(self, runner: Runner, event: str = "unload") -> None:
        if runner.timer is not None:
            runner.timer.cancel()
            runner.timer = None
        if self.runners.get(runner.key) is runner:
            del self.runners[runner.key]
            self._on_event(event, runner.key)

    def _dispatch(self) -> None:
        """Hand out slots and start loads, in FIFO order per model.

        A waiter behind another waiter for the same model never overtakes it. A load that has to
        wait for memory held by busy models blocks later loads (Ollama schedules loads one at a
        time) but not requests for models already in memory.
        """
        if self._closed:
            return
        blocked: set[str] = set()
        loads_blocked = False
        for waiter in list(self._queue):
            key = waiter.spec.name
            if key in blocked:
                continue
            runner = self.runners.get(key)
            if runner is not None and runner.num_ctx == waiter.num_ctx \
                    and not runner.unload_when_idle:
                if runner.state == "ready" and runner.active < self.profile.num_parallel:
                    self._grant(waiter, runner)
                else:
                    blocked.add(key)
                continue
            if runner is not None:
                # a different num_ctx (or an unload pending): reload once the runner is idle
                if runner.state == "ready" and runner.active == 0:
                    self._unload(runner)
                else:
                    blocked.add(key)
                    continue
            if loads_blocked:
                blocked.add(key)
                continue
            verdict = self._make_room(waiter.spec)
            if verdict == "ok":
                self._start_load(waiter)
                blocked.add(key)
            elif verdict == "wait":
                loads_blocked = True
                blocked.add(key)
            else:
                self._queue.remove(waiter)
                if not waiter.future.done():
                    waiter.future.set_exception(ApiError(500, verdict))

    def _grant(self, waiter: _Waiter, runner: Runner) -> None:
        self._queue.remove(waiter)
        runner.active += 1
        runner.last_used = time.monotonic()
        if not waiter.future.done():
            waiter.future.set_result(runner)
            self._on_event("start", runner.key)
        else:  # cancelled between dispatches
            runner.active -= 1

    def _make_room(self, spec: ModelSpec) -> str:
        """"ok" when ``spec`` fits now (evicting idle models, least recently used first), "wait"
        when it will fit once busy models finish, else the out-of-memory error text."""
        usable = self.profile.usable_bytes
        if spec.size_bytes > usable:
            return (f"model requires more system memory ({human_bytes(spec.size_bytes)}) "
                    f"than is available ({human_bytes(usable)})")
        limit = self.profile.max_loaded_models

        def short() -> bool:
            too_many = limit > 0 and len(self.runners) >= limit
            return too_many or self.used_bytes + spec.size_bytes > usable

        while short():
            idle = [r for r in self.runners.values()
                    if r.state == "ready" and r.active == 0]
            if not idle:
                return "wait"
            victim = min(idle, key=lambda r: r.last_used)
            self._unload(victim, "evict")
        return "ok"

    def _start_load(self, waiter: _Waiter) -> None:
        spec = waiter.spec
        load_s = spec.size_gb / self.profile.load_gbps
        if waiter.slow_load is not None and self._consume_fault(waiter.slow_load):
            load_s *= SLOW_LOAD_FACTOR
        runner = Runner(spec=spec, num_ctx=waiter.num_ctx, load_s=load_s,
                        keep_alive=waiter.keep_alive)
        self.runners[spec.name] = runner
        runner.task = asyncio.get_running_loop().create_task(
            self._load(runner), name=f"herd-sim-load-{spec.name}")

    async def _load(self, runner: Runner) -> None:
        try:
            await asyncio.sleep(self.sleep_for(runner.load_s))
        except asyncio.CancelledError:
            return
        runner.task = None
        if self.runners.get(runner.key) is not runner:
            return
        runner.state = "ready"
        self._on_event("load", runner.key)
        # everyone queued for this model waited for this load
        for waiter in self._queue:
            if waiter.spec.name == runner.key:
                waiter.waited_load_s = runner.load_s
        self._touch(runner, runner.keep_alive)
        self._dispatch()
