"""Wait time: how long a request would wait behind the work already on a node, from the p75
latency this router has measured for the model there. Where queue-depth counts requests, this
weighs them by how long they actually take, so a deep queue of quick answers costs little."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from herd_kernel.api import Candidate, ScoringContext
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl

SETTINGS = (
    Setting(env="FLEET_SCORE_WAIT_TIME_MAX_PENALTY", type=float, default=45.0,
            help="Largest penalty the estimated wait can give (a positive number of points); "
                 "approached as the wait grows without bound."),
    Setting(env="FLEET_SCORE_WAIT_TIME_HALF_S", type=float, default=5.0,
            help="Estimated wait, in seconds, that costs half of FLEET_SCORE_WAIT_TIME_MAX_PENALTY."),
)


def _usable(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value >= 0


class WaitTimeSignal:
    name = "wait-time"
    weight = 1.0
    high = 0.0

    def __init__(self, max_penalty: float, half_s: float) -> None:
        self.max_penalty = abs(max_penalty)  # a magnitude: a negative one would reward waiting
        self.half_s = half_s
        self.low = -self.max_penalty

    def penalty(self, wait_s: float) -> float:
        """-max * w / (w + half): 0 for no wait, -max/2 at half, approaching -max smoothly."""
        if wait_s <= 0:
            return 0.0
        if self.half_s <= 0:
            return -self.max_penalty  # no half-life configured: any wait costs everything
        return -self.max_penalty * wait_s / (wait_s + self.half_s)

    def score(self, ctx: ScoringContext, candidates: Sequence[Candidate]) -> list[float]:
        latency = getattr(ctx, "latency", None)
        if latency is None or not candidates:
            return [0.0] * len(candidates)
        model = ctx.model
        own = [latency.p75_ms(c.node_id, model) for c in candidates]
        # a node with no history for the model borrows the fleet's typical p75; nodes lacking
        # history contribute nothing, so one median over all of them is the median of the others
        known = [p for p in own if _usable(p)]
        fleet_p75 = statistics.median(known) if known else None
        points: list[float] = []
        for c, p75 in zip(candidates, own, strict=True):
            depth = max(0, c.pending) + max(0, c.in_flight)
            if depth == 0:
                points.append(0.0)  # an idle node makes you wait for nothing
                continue
            if not _usable(p75):
                p75 = fleet_p75
            if p75 is None:
                points.append(0.0)  # no history anywhere: no evidence, stay neutral
                continue
            points.append(self.penalty(depth / c.slots * p75 / 1000.0))
        return points


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_signals(config: Config) -> list[WaitTimeSignal]:
    return [
        WaitTimeSignal(
            max_penalty=config["FLEET_SCORE_WAIT_TIME_MAX_PENALTY"],
            half_s=config["FLEET_SCORE_WAIT_TIME_HALF_S"],
        )
    ]
