"""Pre-warming: when ``FLEET_PREWARM_DEPTH`` requests wait on one node:model, the runner-up node
(the one the router would choose without the busy one) loads the model, so the next requests,
and the rebalancer, find it hot there."""

from __future__ import annotations

from collections.abc import Sequence

from herd_kernel.api import Decision, QueueView, WaiterView
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl
from herd_kernel.models import NodeState

SETTINGS = (
    Setting(
        env="FLEET_PREWARM_DEPTH",
        type=int,
        default=2,
        help="Requests waiting on one node:model that make the router load the model on the "
        "runner-up node, so the next requests find it hot. 0 turns pre-warming off.",
    ),
)


def embedding_only(node: NodeState, model: str) -> bool:
    available = node.available.get(model)
    return available is not None and "embedding" in available.capabilities \
        and "completion" not in available.capabilities


class Prewarm:
    """Checks when a request joins a line (on reaching the depth) and on every periodic pass
    (a line still at least that deep, e.g. after an earlier warm-up failed)."""

    name = "prewarm"

    def __init__(self, depth: int) -> None:
        self.depth = depth

    def waiting(self, queue: QueueView, waiter: WaiterView) -> None:
        lane = waiter.lane
        if lane is not None and len(lane.waiting) == self.depth:
            self.prewarm(queue, waiter)

    def tick(self, queue: QueueView) -> None:
        for lane in list(queue.waiting_lanes):
            if len(lane.waiting) >= self.depth:
                self.prewarm(queue, lane.waiting[0])

    def prewarm(self, queue: QueueView, waiter: WaiterView) -> bool:
        """Ask for the runner-up of ``waiter``'s node to load its model; True if asked."""
        decision = waiter.decision
        if not isinstance(decision, Decision):
            return False
        runner = queue.choose(waiter.route, decision.model,
                              {*waiter.exclude, decision.node.node_id})
        if not isinstance(runner, Decision) or runner.model_key in runner.node.loaded:
            return False
        if embedding_only(runner.node, runner.model_key):
            return False  # no empty generate loads these, and they load in a moment anyway
        waiting = len(waiter.lane.waiting) if waiter.lane is not None else 0
        return queue.warm(runner, behind=decision.node.node_id, waiting=waiting)


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_lane_policies(config: Config) -> list[Prewarm]:
    depth = int(config["FLEET_PREWARM_DEPTH"])
    return [Prewarm(depth)] if depth > 0 else []
