"""Rebalancing: waiters of saturated node:model lanes move, oldest first, to nodes where their
model is hot and slots are free, each re-scored on the node it moves to (so its headers and
trace tell the truth)."""

from __future__ import annotations

import collections

from herd_kernel.api import Decision, LaneView, QueueView, WaiterView
from herd_kernel.config import Config
from herd_kernel.hookspecs import hookimpl


class Rebalance:
    """Runs on every pass of the pump while requests wait (completions, fleet changes, a model
    loaded, the periodic pass), so a node that turns hot takes waiters at once."""

    name = "rebalance"

    def pump(self, queue: QueueView) -> None:
        donors: dict[str, list[LaneView]] = collections.defaultdict(list)
        for lane in queue.waiting_lanes:
            donors[lane.model].append(lane)
        for model, lanes in donors.items():
            for node in queue.nodes.values():
                if model not in node.loaded or not queue.servable(node):
                    continue
                target = queue.lane(node.node_id, model)
                if target.waiting:
                    continue  # it has its own line: its free slots are theirs
                queue.refresh_limit(node, target)
                while target.in_flight < target.limit:
                    waiter = oldest_movable(lanes, node.node_id)
                    if waiter is None:
                        break
                    assert isinstance(waiter.decision, Decision)
                    moved = queue.choose(waiter.route, waiter.decision.model, waiter.exclude,
                                         only=node.node_id)
                    if not isinstance(moved, Decision):
                        break
                    queue.move(waiter, moved)


def oldest_movable(lanes: list[LaneView], node_id: str) -> WaiterView | None:
    """The longest-waiting request, among the heads of the saturated ``lanes``, that may go to
    ``node_id`` (it has not failed there)."""
    best: WaiterView | None = None
    for lane in lanes:
        if lane.node_id == node_id or lane.in_flight < lane.limit:
            continue
        for waiter in lane.waiting:
            if node_id not in waiter.exclude:
                if best is None or waiter.since < best.since:
                    best = waiter
                break
    return best


@hookimpl
def herd_lane_policies(config: Config) -> list[Rebalance]:
    return [Rebalance()]
