"""Routing decisions: eliminate the nodes that cannot serve (with a reason each), score the rest
with every registered signal, pick the highest weighted sum. Pure CPU work, no I/O, linear in the
number of nodes.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Collection, Sequence
from typing import Any

import attrs
import structlog

from herd_kernel.api import Candidate, Decision, LatencyView, NoRoute, ScoringContext
from herd_kernel.config import Config
from herd_kernel.fleet import Fleet
from herd_kernel.latency import LatencyHistory
from herd_kernel.models import Endpoint, NodeState, RouteRequest, normalize_model

#: why an endpoint cannot serve a request (None: it can); the engines' ``refuses``
Refusal = Callable[[RouteRequest, Endpoint], str | None]

log = structlog.get_logger("herd.scoring")


class Scorer:
    def __init__(
        self,
        fleet: Fleet,
        signals: Sequence[Any],
        config: Config,
        latency: LatencyView | None = None,
        refuses: Refusal | None = None,
    ) -> None:
        self.fleet = fleet
        self.refuses = refuses
        self.latency = latency if latency is not None else LatencyHistory()
        self.signals = list(signals)
        self.config = config
        self.shortlist = max(1, int(config["FLEET_SCORE_SHORTLIST"]))
        self._broken: set[str] = set()
        self.started = fleet.clock()  # the router's start: nodes report within a heartbeat or so
        self.report_window = float(config["FLEET_HEARTBEAT_OFFLINE"])
        # nodes that served requests before this start (from the trace store): until they report
        # again (or the window ends), a model the fleet does not list may be one of theirs
        self.expected: set[str] = set()

    def still_reporting(self) -> tuple[str, int] | None:
        """Why the fleet cannot yet say a model does not exist, and the seconds to wait; None
        once every live node has reported a model list. Only unknown-model answers ask."""
        nodes = self.fleet.nodes.values()
        since = self.fleet.clock() - self.started
        if since < self.report_window:
            wait = max(1, min(5, math.ceil(self.report_window - since)))
            if not any(n.endpoints for n in nodes):
                return (f"the router started {since:.0f} s ago and no node has reported its "
                        "models yet"), wait
            missing = sorted(self.expected - self.fleet.nodes.keys())
            if missing:  # served before the restart, not back yet: its models may be the ones
                return (f"the router started {since:.0f} s ago and node {missing[0]} has not "
                        "reported yet"), wait
        for node in nodes:
            if node.status != "offline":
                for endpoint in node.endpoints:
                    if not endpoint.healthy:
                        return (f"node {node.node_id} cannot read the model list of its "
                                f"{endpoint.engine or endpoint.kind} at {endpoint.url}"), 5
        return None

    def choose(self, request: RouteRequest, exclude: Collection[str] = ()) -> Decision | NoRoute:
        """Best node for the request's model, else for each fallback model in order."""
        first: NoRoute | None = None
        for index, model in enumerate((request.model, *request.fallback_models)):
            result = self.choose_model(request, model, exclude)
            if isinstance(result, Decision):
                if index:
                    return attrs.evolve(result, fallback=True)
                return result
            first = first or result
        assert first is not None
        if first.kind == "unknown_model" and request.fallback_models:
            # the requested model is unknown, but a fallback exists somewhere and is just busy
            if any(self.fleet.holders(normalize_model(m)) for m in request.fallback_models):
                return NoRoute(kind="unavailable", model=request.model, eliminated=first.eliminated)
        return first

    def choose_model(
        self,
        request: RouteRequest,
        model: str,
        exclude: Collection[str] = (),
        only: str | None = None,
    ) -> Decision | NoRoute:
        """Best node for one model; ``only`` scores that one node alone (the rebalancer's move)."""
        key = normalize_model(model)
        fleet = self.fleet
        nodes = fleet.nodes.values()
        if only is not None:
            one = fleet.nodes.get(only)
            nodes = [one] if one is not None else []
        hot: list[NodeState] = []
        cold: list[NodeState] = []
        eliminated: dict[str, str] = {}
        known = False
        refused = 0
        for node in nodes:
            if key in node.loaded:
                group = hot
            elif key in node.available:
                group = cold
            else:
                continue
            known = True
            hb = node.heartbeat
            # elimination_reason inlined: this loop runs over every node
            if node.status == "offline" or hb.draining or hb.paused or not node.endpoints \
                    or node.node_id in exclude:
                eliminated[node.node_id] = elimination_reason(node, exclude) or "unavailable"
                continue
            if self.refuses is not None:
                endpoint = node.serving.get(key)
                reason = "no endpoint serves it" if endpoint is None \
                    else self.refuses(request, endpoint)
                if reason is not None:
                    eliminated[node.node_id] = reason
                    refused += 1
                    continue
            group.append(node)
        if not hot and not cold:
            kind = "unavailable" if known else "unknown_model"
            if known and refused == len(eliminated):
                kind = "refused"
            return NoRoute(kind=kind, model=model, eliminated=eliminated)
        eligible = hot + cold
        if len(eligible) > self.shortlist:
            # the shortlist: the best by a quick order of the nodes with the model in memory and
            # of those without, with a quarter of the places kept for the latter (a cold idle
            # node can beat a hot busy one, and that is for the signals to judge)
            cold_places = min(len(cold), max(self.shortlist // 4, self.shortlist - len(hot)))
            eligible = self._best(key, hot, self.shortlist - cold_places)
            eligible += self._best(key, cold, self.shortlist - len(eligible))

        now = fleet.clock()
        queues = fleet.queues
        node_in_flight = fleet.node_in_flight
        candidates: list[Candidate] = []
        for node in eligible:
            lane = queues.get((node.node_id, key))
            unloaded = node.unloaded_at.get(key)
            candidates.append(
                Candidate(
                    node=node,
                    model=key,
                    loaded=node.loaded.get(key),
                    available=node.available.get(key),
                    in_flight=lane.in_flight if lane else 0,
                    pending=lane.pending if lane else 0,
                    limit=lane.limit if lane else 0,
                    node_in_flight=node_in_flight.get(node.node_id, 0),
                    unloaded_ago=None if unloaded is None else now - unloaded,
                )
            )
        ctx = ScoringContext(
            request=request, model=key, now=now, config=self.config, latency=self.latency
        )
        totals, points = _points(self.signals, ctx, candidates, self._run_signal)

        # ties go to the node with fewer requests from us in flight, then to the lowest id
        # (max keeps the first of equal keys, so walk the candidates in id order)
        by_id = sorted(range(len(candidates)), key=lambda i: candidates[i].node_id)
        best = max(by_id, key=lambda i: (totals[i], -candidates[i].node_in_flight))
        chosen = candidates[best].node
        return Decision(
            node=chosen,
            endpoint=chosen.serving.get(key),
            model=model,
            model_key=key,
            score=round(totals[best], 2),
            breakdown={name: round(values[best], 2) for name, values in points},
            eliminated=eliminated,
        )

    def _best(self, key: str, nodes: list[NodeState], count: int) -> list[NodeState]:
        """The first ``count`` of ``nodes`` in the shortlist's quick order, the kernel's rough view
        of what the signals weigh most: idle, then a free slot, then least queued per slot, then
        most free memory. About a microsecond a node."""
        if len(nodes) <= count:
            return nodes
        queues = self.fleet.queues
        order: list[float] = []
        for node in nodes:
            memory = node.heartbeat.memory.available_gb * 1e-7  # a tie-break below 1 TB free
            lane = queues.get((node.node_id, key))
            busy = lane.in_flight + lane.pending if lane is not None else 0
            if busy:
                limit = lane.limit or 1  # type: ignore[union-attr]
                order.append((1.0 if busy < limit else 0.0) - busy / limit + memory)
            else:
                order.append(2.0 + memory)
        return [nodes[i] for i in heapq.nlargest(count, range(len(nodes)), key=order.__getitem__)]

    def _run_signal(
        self, signal: Any, ctx: ScoringContext, candidates: list[Candidate]
    ) -> Sequence[float]:
        try:
            values = signal.score(ctx, candidates)
            if len(values) != len(candidates):
                raise ValueError(f"returned {len(values)} scores for {len(candidates)} candidates")
            try:
                if all(map(math.isfinite, values)):
                    return values
            except TypeError:
                pass
            return [v if isinstance(v, int | float) and math.isfinite(v) else 0.0 for v in values]
        except Exception as exc:  # noqa: BLE001 - a broken signal scores neutral, routing goes on
            if signal.name not in self._broken:
                self._broken.add(signal.name)
                log.error("signal failed; scoring it neutral", signal=signal.name, error=repr(exc))
            return [0.0] * len(candidates)


def _points(
    signals: Sequence[Any],
    ctx: ScoringContext,
    candidates: Sequence[Candidate],
    run: Any = None,
) -> tuple[list[float], list[tuple[str, list[float]]]]:
    """Each candidate's total, and each signal's weighted points per candidate (every value clamped
    to its signal's ``[low, high]`` and multiplied by its weight)."""
    totals = [0.0] * len(candidates)
    points: list[tuple[str, list[float]]] = []
    for signal in signals:
        values = run(signal, ctx, candidates) if run else signal.score(ctx, candidates)
        weight, low, high = signal.weight, signal.low, signal.high
        weighted = [min(high, max(low, value)) * weight for value in values]
        totals = [total + p for total, p in zip(totals, weighted, strict=True)]
        points.append((signal.name, weighted))
    return totals, points


def weighted_totals(
    signals: Sequence[Any],
    ctx: ScoringContext,
    candidates: Sequence[Candidate],
    run: Any = None,
) -> tuple[list[float], list[dict[str, float]]]:
    """Each candidate's total and per-signal points: every value clamped to its signal's
    ``[low, high]`` and multiplied by its weight. Signal tests call this to rank as the kernel does."""
    totals, points = _points(signals, ctx, candidates, run)
    breakdowns = [{name: round(values[i], 2) for name, values in points}
                  for i in range(len(candidates))]
    return totals, breakdowns


def elimination_reason(node: NodeState, exclude: Collection[str]) -> str | None:
    if node.node_id in exclude:
        return "failed earlier attempt"
    if node.status == "offline":
        return "offline"
    if node.heartbeat.draining:
        return "draining"
    if node.heartbeat.paused:
        return "paused"
    if not node.endpoints:
        return "no engine reported"
    return None
