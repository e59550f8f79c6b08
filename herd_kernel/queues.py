"""Per ``node:model`` queues, the holding queue, the zombie reaper, and the lane-policy calls.

A request asks ``QueueManager.acquire`` for a place to run. It is scored; when the chosen
``node:model`` lane has a free slot and nobody waiting, it gets the slot at once (the fast path:
no future, no task, constant work). Otherwise it waits, in the chosen lane (first come, first
served), or in the holding queue when every node that has the model is out of reach (offline,
paused, draining, failed earlier). As in Ollama, a lane wait lasts as long as the client waits
(``FLEET_HOLD_TIMEOUT`` bounds it only when set); the holding queue keeps a request at most
``FLEET_HOLDING_TIMEOUT`` seconds in a row, since nothing says a node will come back.

The *pump* moves waiting requests. It runs once per event-loop turn at most, when a slot frees,
when the fleet changes (a heartbeat, a status change, a model the router loaded) and every
``FLEET_REBALANCE_INTERVAL`` seconds. In one pass it:

- gives freed slots to their lanes' oldest live waiters (a waiter whose client has gone is
  dropped, never dispatched);
- re-scores the waiters of lanes whose node can no longer serve;
- lets the lane policies' ``pump`` move waiters (the rebalancer plugin does);
- re-scores the holding queue.

The periodic pass also reaps in-flight requests that relayed nothing for ``FLEET_STALE_TIMEOUT``
and calls the policies' ``tick`` (the pre-warm plugin does).

A lane's concurrency comes from the node's ``OLLAMA_NUM_PARALLEL`` (or ``FLEET_DEFAULT_CONCURRENCY``
when it does not say), capped, then narrowed by the policies' ``limit`` (embedding-only models,
cold loads short of memory, the throughput tuner: ``herd-policy-concurrency``). Policy is in
plugins (``herd_lane_policies``); this module calls only the callbacks each policy defines,
worked out once, and a policy that raises is logged once and skipped.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any

import attrs
import structlog
from attrs import frozen

from herd_kernel.api import LANE_POLICY_CALLBACKS
from herd_kernel.config import Config
from herd_kernel.fleet import Fleet, Lane
from herd_kernel.models import NodeState, RouteRequest, normalize_model
from herd_kernel.scoring import Decision, NoRoute, Scorer, elimination_reason

log = structlog.get_logger("herd.queues")

Warm = Callable[[NodeState, str], Awaitable[str | None]]  # (node, model) -> error or None
_WARM_RETRY_S = 60.0  # a pre-warm of one node:model is not tried again sooner


@frozen(kw_only=True)
class Refused:
    """A request that got no slot: ``timeout`` (waited ``limit_s``: ``FLEET_HOLD_TIMEOUT``, or
    ``FLEET_HOLDING_TIMEOUT`` in the holding queue; 503), ``full`` (``FLEET_MAX_QUEUE`` requests
    already waiting, 503 at once), ``gone`` (client left) or ``shutdown`` (the router is
    stopping, 503)."""

    kind: str
    model: str
    waited_s: float
    reason: str
    limit_s: float = 0.0


class Slot:
    """One running request's place in a lane. ``touch()`` on every relayed chunk tells the reaper
    the request is alive; ``release()`` once at the end (again is harmless)."""

    __slots__ = ("manager", "lane", "started", "progress", "busy_start", "waited_s", "reaped",
                 "released", "task", "ended")

    def __init__(self, manager: QueueManager, lane: Lane, now: float, waited_s: float) -> None:
        self.manager = manager
        self.lane = lane
        self.started = now
        self.progress = now
        self.busy_start = lane.busy_integral(now)  # for the mean concurrency over its life
        self.waited_s = waited_s
        self.reaped = False
        self.released = False
        self.task: asyncio.Task[Any] | None = None  # cancelled by the reaper or at shutdown
        self.ended: str | None = None  # why the router cancelled ``task`` (reaper, shutdown)

    def touch(self) -> None:
        self.progress = time.monotonic()

    def release(self, ok: bool | None, completion_tokens: int | None = None) -> None:
        self.manager.release(self, ok, completion_tokens)


class Ticket:
    """A waiting request."""

    __slots__ = ("route", "exclude", "alive", "future", "lane", "decision", "since", "held_timer")

    def __init__(self, route: RouteRequest, exclude: Collection[str],
                 alive: Callable[[], bool] | None, future: asyncio.Future[Any], now: float) -> None:
        self.route = route
        self.exclude = exclude
        self.alive = alive
        self.future = future
        self.lane: Lane | None = None  # None: in the holding queue
        self.decision: Decision | NoRoute | None = None
        self.since = now
        self.held_timer: asyncio.TimerHandle | None = None  # set while in the holding queue


class QueueManager:
    def __init__(self, fleet: Fleet, scorer: Scorer, config: Config, *,
                 warm: Warm | None = None,
                 event: Callable[..., None] | None = None,
                 policies: Iterable[Any] = ()) -> None:
        self.fleet = fleet
        self.scorer = scorer
        self.hold_timeout = max(0.0, float(config["FLEET_HOLD_TIMEOUT"]))  # 0: no limit
        self.holding_timeout = max(0.0, float(config["FLEET_HOLDING_TIMEOUT"]))
        self.default_limit = max(1, int(config["FLEET_DEFAULT_CONCURRENCY"]))
        self.max_limit = max(1, int(config["FLEET_MAX_CONCURRENCY"]))
        self.interval = max(0.01, float(config["FLEET_REBALANCE_INTERVAL"]))
        self.stale_timeout = float(config["FLEET_STALE_TIMEOUT"])
        self.max_waiting = max(0, int(config["FLEET_MAX_QUEUE"]))
        self._warm = warm
        self.event = event or (lambda kind, **fields: None)
        self.held: list[Ticket] = []
        self.waiting_lanes: set[Lane] = set()
        self.waiting_total = 0
        self.active: set[Slot] = set()
        self.warming: dict[tuple[str, str], float] = {}  # node:model -> retry-after (monotonic)
        self.reaped_total = 0
        self.moved_total = 0
        self.prewarms_total = 0
        self.abandoned_total = 0
        self.timeouts_total = 0
        self.full_total = 0
        self._pump_handle: asyncio.Handle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.policies = list(policies)
        # callback -> [(policy name, bound method)], only for the policies that define it, so a
        # callback no policy wants costs one falsy check on the hot path
        calls: dict[str, list[tuple[str, Callable[..., Any]]]] = {}
        for callback in LANE_POLICY_CALLBACKS:
            calls[callback] = [(p.name, fn) for p in self.policies
                               if callable(fn := getattr(p, callback, None))]
        self._limiters = calls["limit"]
        self._finishers = calls["finished"]
        self._joiners = calls["waiting"]
        self._pumpers = calls["pump"]
        self._tickers = calls["tick"]
        self._describers = calls["describe"]
        self._broken: set[tuple[str, str]] = set()
        fleet.watchers.append(self._fleet_changed)

    # --- the request's side ----------------------------------------------------------------------

    async def acquire(
        self,
        route: RouteRequest,
        exclude: Collection[str] = (),
        alive: Callable[[], bool] | None = None,
    ) -> tuple[Decision, Slot] | NoRoute | Refused:
        """A node and a slot for ``route``, waiting if need be; or why there is none."""
        decision = self.scorer.choose(route, exclude)
        if isinstance(decision, Decision):
            lane = self.fleet.lane(decision.node.node_id, decision.model_key)
            lane.limit = self.limit_for(decision.node, lane)
            if not lane.waiting and lane.in_flight < lane.limit:
                return decision, self._grant(lane, 0.0)
        elif decision.kind != "unavailable" or set(decision.eliminated) <= set(exclude):
            # unknown, refused by every engine that has it, or every holder already failed this
            # request: no wait helps
            return decision
        elif self.holding_timeout <= 0:
            return decision  # no holding queue: 503 at once while no node can serve the model

        if self.waiting_total + len(self.held) >= self.max_waiting:
            self.full_total += 1
            return Refused(kind="full", model=route.model, waited_s=0.0,
                           reason=f"{self.max_waiting} requests are already waiting")
        loop = asyncio.get_running_loop()
        ticket = Ticket(route, exclude, alive, loop.create_future(), loop.time())
        self._wait(ticket, decision)
        try:
            # like Ollama, a lane wait lasts as long as the client waits, unless a limit is set
            async with asyncio.timeout(self.hold_timeout or None):
                return await ticket.future
        except TimeoutError:
            self._forget(ticket)
            if ticket.future.done() and not ticket.future.cancelled():
                return ticket.future.result()  # granted in the same instant the wait ran out
            self.timeouts_total += 1
            return Refused(kind="timeout", model=route.model,
                           waited_s=round(loop.time() - ticket.since, 3),
                           reason=self._wait_reason(ticket), limit_s=self.hold_timeout)
        except asyncio.CancelledError:  # the client left while waiting
            if ticket.lane is not None:
                ticket.lane.abandoned += 1
            self.abandoned_total += 1
            self._forget(ticket)
            if ticket.future.done() and not ticket.future.cancelled():
                result = ticket.future.result()
                if isinstance(result, tuple):
                    result[1].release(None)
            raise
        finally:
            self._unhold(ticket)

    def release(self, slot: Slot, ok: bool | None, completion_tokens: int | None = None) -> None:
        """``ok``: True completed, False failed, None given back unused."""
        if slot.released:
            return
        slot.released = True
        self.active.discard(slot)
        for name, finished in self._finishers:
            try:
                finished(slot, ok, completion_tokens)
            except Exception as exc:  # noqa: BLE001 - a broken policy must not break the queue
                self._policy_failed(name, "finished", exc)
        self.fleet.finished(slot.lane, ok)
        if self.waiting_total or self.held:
            self._schedule()

    # --- concurrency -----------------------------------------------------------------------------

    def limit_for(self, node: NodeState, lane: Lane) -> int:
        endpoint = node.serving.get(lane.model)
        limit = endpoint.num_parallel if endpoint is not None and endpoint.num_parallel > 0 \
            else self.default_limit
        limit = min(limit, self.max_limit)
        for name, narrow in self._limiters:
            try:
                limit = int(narrow(node, lane, limit))
            except Exception as exc:  # noqa: BLE001 - a broken policy leaves the limit as it was
                self._policy_failed(name, "limit", exc)
        return max(1, limit)

    def refresh_limit(self, node: NodeState, lane: Lane) -> int:
        lane.limit = self.limit_for(node, lane)
        return lane.limit

    # --- what lane policies see and ask (``herd_kernel.api.QueueView``) --------------------------

    @property
    def nodes(self) -> Mapping[str, NodeState]:
        return self.fleet.nodes

    def lane(self, node_id: str, model: str) -> Lane:
        return self.fleet.lane(node_id, model)

    @staticmethod
    def servable(node: NodeState) -> bool:
        return elimination_reason(node, ()) is None

    def choose(self, route: RouteRequest, model: str, exclude: Collection[str] = (),
               only: str | None = None) -> Decision | NoRoute:
        return self.scorer.choose_model(route, model, exclude, only=only)

    def move(self, waiter: Ticket, decision: Decision) -> None:
        source = waiter.lane
        if source is None or waiter.future.done() or not isinstance(waiter.decision, Decision):
            raise ValueError("only a request waiting in a lane can move")
        target = self.fleet.lane(decision.node.node_id, decision.model_key)
        if target is source or target.in_flight >= target.limit:
            raise ValueError(f"{target.node_id}:{target.model} has no free slot")
        self._forget(waiter)
        source.moved += 1
        self.moved_total += 1
        self.event("rebalanced", model=source.model, source=source.node_id,
                   target=target.node_id, request_id=waiter.route.request_id)
        self._give(waiter, _keep_fallback(decision, waiter.decision), target)

    def warm(self, decision: Decision, *, behind: str, waiting: int) -> bool:
        """Load ``decision.model`` on ``decision.node`` in the background (``QueueView.warm``)."""
        if self._warm is None:
            return False
        key = (decision.node.node_id, decision.model_key)
        now = time.monotonic()
        if self.warming.get(key, 0.0) > now:
            return False
        self.warming[key] = now + 3600.0  # in progress
        self.prewarms_total += 1
        self.event("prewarm", node_id=decision.node.node_id, model=decision.model,
                   behind=behind, waiting=waiting)
        task = asyncio.get_running_loop().create_task(self._warm_now(decision),
                                                      name="herd-prewarm")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def _policy_failed(self, name: str, callback: str, exc: Exception) -> None:
        if (name, callback) not in self._broken:
            self._broken.add((name, callback))
            log.error("lane policy failed; skipped", policy=name, callback=callback,
                      error=repr(exc))

    def _ask(self, calls: list[tuple[str, Callable[..., Any]]], callback: str, *args: Any) -> None:
        for name, fn in calls:
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - a broken policy must not break the queue
                self._policy_failed(name, callback, exc)

    # --- waiting ---------------------------------------------------------------------------------

    def _grant(self, lane: Lane, waited_s: float) -> Slot:
        self.fleet.started(lane)
        slot = Slot(self, lane, time.monotonic(), waited_s)
        self.active.add(slot)
        return slot

    def _wait(self, ticket: Ticket, decision: Decision | NoRoute) -> None:
        """Put a ticket where ``decision`` says: a slot now, a lane's line, or the holding queue."""
        ticket.decision = decision
        if isinstance(decision, NoRoute):
            if decision.kind != "unavailable":  # the model left the fleet while it waited, or
                # only engines that cannot take this request have it now
                self._unhold(ticket)
                self._resolve(ticket, decision)
            else:
                ticket.lane = None
                self.held.append(ticket)
                if ticket.held_timer is None:  # the bound counts from entering, across re-scores
                    ticket.held_timer = asyncio.get_running_loop().call_later(
                        self.holding_timeout, self._held_too_long, ticket)
            return
        self._unhold(ticket)
        lane = self.fleet.lane(decision.node.node_id, decision.model_key)
        lane.limit = self.limit_for(decision.node, lane)
        if not lane.waiting and lane.in_flight < lane.limit:
            self._give(ticket, decision, lane)
            return
        ticket.lane = lane
        lane.waiting.append(ticket)
        self.waiting_total += 1
        self.waiting_lanes.add(lane)
        if self._joiners:
            self._ask(self._joiners, "waiting", self, ticket)

    @staticmethod
    def _unhold(ticket: Ticket) -> None:
        if ticket.held_timer is not None:
            ticket.held_timer.cancel()
            ticket.held_timer = None

    def _held_too_long(self, ticket: Ticket) -> None:
        """``FLEET_HOLDING_TIMEOUT`` ran out while no node could serve the ticket's model."""
        ticket.held_timer = None
        if ticket.future.done() or ticket.lane is not None or ticket not in self.held:
            return
        self.held.remove(ticket)
        self.timeouts_total += 1
        waited = asyncio.get_running_loop().time() - ticket.since
        self._resolve(ticket, Refused(kind="timeout", model=ticket.route.model,
                                      waited_s=round(waited, 3), reason=self._wait_reason(ticket),
                                      limit_s=self.holding_timeout))

    def _give(self, ticket: Ticket, decision: Decision, lane: Lane) -> None:
        if ticket.future.done():
            return
        waited = asyncio.get_running_loop().time() - ticket.since
        if ticket.alive is not None and not ticket.alive():
            self._abandon(ticket, lane, waited)
            return
        self._resolve(ticket, (decision, self._grant(lane, waited)))

    def _abandon(self, ticket: Ticket, lane: Lane, waited: float) -> None:
        """The client left while waiting: count it and wake its handler, never dispatch it."""
        lane.abandoned += 1
        self.abandoned_total += 1
        self._resolve(ticket, Refused(kind="gone", model=ticket.route.model,
                                      waited_s=round(waited, 3),
                                      reason="client disconnected while waiting"))

    @staticmethod
    def _resolve(ticket: Ticket, result: Any) -> None:
        if not ticket.future.done():
            ticket.future.set_result(result)

    def _take(self, lane: Lane) -> Ticket:
        """The oldest waiter of ``lane``, out of the line."""
        ticket = lane.waiting.popleft()
        self._unlinked(ticket, lane)
        return ticket

    def _forget(self, ticket: Ticket) -> None:
        """Take ``ticket`` out of whichever line it is in."""
        lane = ticket.lane
        if lane is not None:
            try:
                lane.waiting.remove(ticket)
            except ValueError:
                return
            self._unlinked(ticket, lane)
        elif ticket in self.held:
            self.held.remove(ticket)

    def _unlinked(self, ticket: Ticket, lane: Lane) -> None:
        self.waiting_total -= 1
        if not lane.waiting:
            self.waiting_lanes.discard(lane)
        ticket.lane = None

    def _wait_reason(self, ticket: Ticket) -> str:
        decision = ticket.decision
        if isinstance(decision, NoRoute):
            reasons = ", ".join(f"{n}: {r}" for n, r in sorted(decision.eliminated.items()))
            return f"no node can serve it ({reasons})" if reasons else "no node can serve it"
        if isinstance(decision, Decision):
            lane = self.fleet.queues.get((decision.node.node_id, decision.model_key))
            if lane is not None:
                return (f"every slot of {decision.node.node_id} is busy ({lane.in_flight} running, "
                        f"{lane.pending} waiting)")
        return "no slot freed in time"

    # --- the pump --------------------------------------------------------------------------------

    def _fleet_changed(self) -> None:
        if self.waiting_total or self.held:
            self._schedule()

    def _schedule(self) -> None:
        if self._pump_handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # a fleet changed outside any loop (a unit test): nothing waits
                return
            self._pump_handle = loop.call_soon(self.pump)

    def pump(self) -> None:
        self._pump_handle = None
        for lane in list(self.waiting_lanes):
            self._serve(lane)
        if self.waiting_total and self._pumpers:
            self._ask(self._pumpers, "pump", self)
        if self.held:
            held, self.held = self.held, []
            for ticket in held:
                if ticket.future.done():
                    continue
                self._wait(ticket, self.scorer.choose(ticket.route, ticket.exclude))

    def _serve(self, lane: Lane) -> None:
        node = self.fleet.nodes.get(lane.node_id)
        if node is None or elimination_reason(node, ()) is not None:
            # the node went away: its waiters go back to be scored again
            while lane.waiting:
                ticket = self._take(lane)
                self._wait(ticket, self.scorer.choose(ticket.route, ticket.exclude))
            return
        lane.limit = self.limit_for(node, lane)
        while lane.waiting and lane.in_flight < lane.limit:
            ticket = self._take(lane)
            decision = ticket.decision
            assert isinstance(decision, Decision)
            self._give(ticket, decision, lane)

    # --- warming on a policy's request -----------------------------------------------------------

    async def _warm_now(self, runner: Decision) -> None:
        key = (runner.node.node_id, runner.model_key)
        assert self._warm is not None
        try:
            error = await self._warm(runner.node, runner.model)
        except Exception as exc:  # noqa: BLE001 - a failed warm-up only means no head start
            error = repr(exc)
        if error is None:
            # not again soon: a heartbeat read before the load finished may still say "cold"
            self.warming[key] = time.monotonic() + _WARM_RETRY_S
            log.info("pre-warmed", node=runner.node.node_id, model=runner.model)
            self.fleet.add_loaded(*key)  # the rebalancer can use it before the next heartbeat
        else:
            self.warming[key] = time.monotonic() + _WARM_RETRY_S
            log.warning("pre-warm failed", node=runner.node.node_id, model=runner.model, error=error)

    # --- the periodic pass -----------------------------------------------------------------------

    async def run(self) -> None:
        """Every ``interval`` s: reap, drop waiters whose clients left, the policies' tick, pump."""
        while True:
            await asyncio.sleep(self.interval)
            self.tick()

    def tick(self) -> None:
        now = time.monotonic()
        for slot in [s for s in self.active if now - s.progress > self.stale_timeout]:
            self._reap(slot, now)
        for lane in list(self.waiting_lanes):
            for ticket in [t for t in lane.waiting if t.alive is not None and not t.alive()]:
                self._forget(ticket)
                self._abandon(ticket, lane, asyncio.get_running_loop().time() - ticket.since)
        if self._tickers:
            self._ask(self._tickers, "tick", self)
        self.pump()

    def end_all(self, reason: str) -> int:
        """End every waiting and running request (the router is stopping): waiters get
        ``Refused(kind="shutdown")``, running handlers are cancelled with ``slot.ended`` set, so
        the pipeline ends their streams with an in-stream error. Returns how many there were."""
        count = 0
        tickets = [*self.held, *(t for lane in self.waiting_lanes for t in lane.waiting)]
        for ticket in tickets:
            self._forget(ticket)
            self._resolve(ticket, Refused(kind="shutdown", model=ticket.route.model,
                                          waited_s=0.0, reason=reason))
            count += 1
        for slot in list(self.active):
            if slot.task is not None and not slot.task.done():
                slot.ended = reason
                slot.task.cancel()
                count += 1
        return count

    def _reap(self, slot: Slot, now: float) -> None:
        lane = slot.lane
        slot.reaped = True
        slot.ended = (f"node {lane.node_id} made no progress for {self.stale_timeout:g} s; "
                      "the request was ended")
        lane.reaped += 1
        self.reaped_total += 1
        log.warning("reaping a request with no progress", node=lane.node_id, model=lane.model,
                    silent_s=round(now - slot.progress, 1))
        self.event("reaped", node_id=lane.node_id, model=lane.model,
                   silent_s=round(now - slot.progress, 1))
        self.release(slot, False)
        if slot.task is not None and not slot.task.done():
            slot.task.cancel()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pump_handle is not None:
            self._pump_handle.cancel()
            self._pump_handle = None

    # --- reading ---------------------------------------------------------------------------------

    def retry_after(self, model: str, latency: Any = None) -> int:
        """Whole seconds a client refused for ``model`` should wait before trying again."""
        # only refusals ask, so the whole snapshot (its best lane for the model) is cheap enough
        totals = self.snapshot(latency or self.scorer.latency)["models"].get(normalize_model(model))
        best = totals["estimated_wait_s"] if totals else None
        return max(1, min(60, math.ceil(best if best is not None else 5.0)))

    def snapshot(self, latency: Any) -> dict[str, Any]:
        """Per ``node:model`` numbers, per-model totals with an estimated wait, and fleet totals;
        what ``/fleet/queue`` serves. Linear in the lanes, never touches a node."""
        lanes: dict[str, dict[str, Any]] = {}
        models: dict[str, dict[str, Any]] = {}
        for (node_id, model), lane in sorted(self.fleet.queues.items()):
            p75 = latency.p75_ms(node_id, model)
            wait = _estimated_wait_s(lane, p75)
            lanes[f"{node_id}:{model}"] = {
                "node": node_id, "model": model, "limit": lane.limit,
                "in_flight": lane.in_flight, "pending": lane.pending,
                "completed": lane.completed, "failed": lane.failed, "reaped": lane.reaped,
                "moved": lane.moved, "abandoned": lane.abandoned,
                "estimated_wait_s": wait,
            }
            for name, describe in self._describers:
                try:
                    lanes[f"{node_id}:{model}"].update(describe(lane))
                except Exception as exc:  # noqa: BLE001
                    self._policy_failed(name, "describe", exc)
            total = models.setdefault(model, {"in_flight": 0, "pending": 0, "slots_free": 0,
                                              "estimated_wait_s": None})
            total["in_flight"] += lane.in_flight
            total["pending"] += lane.pending
            total["slots_free"] += max(0, lane.limit - lane.in_flight) if not lane.waiting else 0
            if wait is not None and (total["estimated_wait_s"] is None
                                     or wait < total["estimated_wait_s"]):
                total["estimated_wait_s"] = wait
        return {
            "queues": lanes,
            "models": models,
            "holding": len(self.held),
            "waiting": self.waiting_total,
            "in_flight": len(self.active),
            "totals": {"reaped": self.reaped_total, "moved": self.moved_total,
                       "prewarms": self.prewarms_total, "abandoned": self.abandoned_total,
                       "hold_timeouts": self.timeouts_total, "queue_full": self.full_total},
        }


def _estimated_wait_s(lane: Lane, p75_ms: float | None) -> float | None:
    """Seconds a new request would wait for this lane: the requests ahead of it divided among the
    slots, each taking the lane's p75 latency. None while the lane has no history."""
    ahead = lane.pending + lane.in_flight - lane.limit + 1
    if ahead <= 0:
        return 0.0
    if p75_ms is None:
        return None
    rounds = -(-ahead // max(1, lane.limit))
    return round(rounds * p75_ms / 1000, 3)


def _keep_fallback(moved: Decision, original: Decision) -> Decision:
    """A decision re-made on another node keeps the original's fallback flag."""
    return attrs.evolve(moved, fallback=True) if original.fallback else moved
