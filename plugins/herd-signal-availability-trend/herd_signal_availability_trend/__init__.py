"""Availability trend: prefer machines that are free now and freeing up, by their owner's usage
pattern, over machines their owner is about to need, as the node's capacity learner reports it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from herd_kernel.api import Candidate, ScoringContext
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl

SETTINGS = (
    Setting(
        env="FLEET_SCORE_AVAILABILITY_TREND_MAX",
        type=float,
        default=10.0,
        help="Most points availability trend gives or takes: a machine free and freeing up "
        "gets +max, one busy and getting busier (or whose capacity mode is paused) -max.",
    ),
    Setting(
        env="FLEET_SCORE_AVAILABILITY_LEVEL_SHARE",
        type=float,
        default=0.6,
        help="How much of the availability signal is the node's current availability_score; "
        "the rest is its trend (0..1, clamped).",
    ),
)

# The heartbeat fragment the node's capacity learner contributes (kept by the kernel in extras).
CAPACITY = "capacity"


def _number(fragment: Mapping[str, Any], key: str, low: float, high: float) -> float | None:
    """``fragment[key]`` as a float when it is a real number in [low, high], else None."""
    value = fragment.get(key)
    # bool is an int in Python, but ``true`` is not an availability a learner would mean
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        return None
    return value


class AvailabilityTrendSignal:
    """``max * clamp(share * (2 * score - 1) + (1 - share) * trend, -1, 1)`` from the node's
    ``extras["capacity"]``; ``-|max|`` when its mode is ``paused``; 0 without usable data."""

    name = "availability-trend"
    # The points already are the weight; an operator tunes FLEET_SCORE_AVAILABILITY_TREND_MAX.
    weight = 1.0

    def __init__(self, max_points: float, level_share: float) -> None:
        self.max_points = max_points
        # A share outside [0, 1] would turn one part into a penalty for the other; clamp it once
        # here rather than on every request.
        self.level_share = min(1.0, max(0.0, level_share))
        self.low = -abs(max_points)
        self.high = abs(max_points)

    def points(self, candidate: Candidate) -> float:
        capacity = candidate.node.heartbeat.extras.get(CAPACITY)
        if not isinstance(capacity, Mapping):
            return 0.0  # no learner on this node yet: neither favoured nor pushed away
        if capacity.get("mode") == "paused":
            # The owner has taken the machine back. The kernel will eliminate such nodes itself;
            # until then the lowest score keeps the ordering right (lowest even if an operator
            # set a negative max to invert the rest).
            return self.low
        score = _number(capacity, "availability_score", 0.0, 1.0)
        trend = _number(capacity, "trend", -1.0, 1.0)
        if score is None or trend is None:
            return 0.0
        # 2 * score - 1 centres the level on 0, so a half-free machine is neutral, like no data.
        blend = self.level_share * (2.0 * score - 1.0) + (1.0 - self.level_share) * trend
        return self.max_points * min(1.0, max(-1.0, blend))

    def score(self, ctx: ScoringContext, candidates: Sequence[Candidate]) -> list[float]:
        return [self.points(c) for c in candidates]


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_signals(config: Config) -> list[AvailabilityTrendSignal]:
    return [
        AvailabilityTrendSignal(
            max_points=config["FLEET_SCORE_AVAILABILITY_TREND_MAX"],
            level_share=config["FLEET_SCORE_AVAILABILITY_LEVEL_SHARE"],
        )
    ]
