"""Memory fit: how comfortably the model fits in a node's free memory. A loaded model has proven
it fits; one that must load scores by the ratio of room to need, and one that would only fit by
evicting something (or on a node already under critical pressure) is pushed away."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from herd_kernel.api import Candidate, ScoringContext
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl

GB = 1024**3  # the node sensors report memory in GiB, Ollama reports sizes in bytes

SETTINGS = (
    Setting(env="FLEET_SCORE_MEMORY_FIT_MAX", type=float, default=20.0,
            help="Points when the model is loaded, or when the node's free memory is at least "
                 "FLEET_SCORE_MEMORY_FIT_COMFORT times what the model needs."),
    Setting(env="FLEET_SCORE_MEMORY_OVERHEAD", type=float, default=1.2,
            help="Memory a model needs to load, as a multiple of its reported size (KV cache "
                 "and runtime)."),
    Setting(env="FLEET_SCORE_MEMORY_FIT_COMFORT", type=float, default=2.0,
            help="Free memory over need at which memory fit gives full points; from 1 up to "
                 "this ratio the points grow linearly from 0."),
    Setting(env="FLEET_SCORE_MEMORY_FIT_SHORT_PENALTY", type=float, default=-40.0,
            help="Points when the model would not fit without evicting, or the node is under "
                 "critical memory pressure and the model is not loaded (negative pushes away)."),
)


def ceiling_gb(extras: Mapping[str, Any]) -> float | None:
    """The node's dynamic memory ceiling (``extras["capacity"]["ceiling_gb"]``), if it reports a
    usable one. Absent, malformed, non-positive or non-finite values mean "no ceiling", as in the
    reference, where 0 stood for "no limit learned"."""
    capacity = extras.get("capacity") if isinstance(extras, Mapping) else None
    if not isinstance(capacity, Mapping):
        return None
    value = capacity.get("ceiling_gb")
    # bool is an int subclass; a JSON true is not a number of gigabytes
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) and value > 0 else None


class MemoryFitSignal:
    name = "memory-fit"
    weight = 1.0

    def __init__(self, max_points: float, overhead: float, comfort: float, short_penalty: float):
        self.max_points = max_points
        self.overhead = overhead
        self.comfort = comfort
        self.short_penalty = short_penalty
        self.low = min(short_penalty, 0.0, max_points)
        self.high = max(max_points, 0.0, short_penalty)

    def fit_points(self, ratio: float) -> float:
        """Points for room/need before pressure is considered."""
        if ratio < 1.0:
            return self.short_penalty
        if ratio >= self.comfort or self.comfort <= 1.0:
            return self.max_points
        return self.max_points * (ratio - 1.0) / (self.comfort - 1.0)

    def points(self, candidate: Candidate, fleet_size: int) -> float:
        if candidate.loaded is not None:
            return self.max_points
        memory = candidate.node.heartbeat.memory
        if memory.total_gb <= 0:
            return 0.0  # no memory sensor on this node: no evidence either way
        if memory.pressure == "critical":
            # loading anything here means swapping or evicting, whatever the model's size
            return self.short_penalty
        size = candidate.model_size_bytes or fleet_size
        if size <= 0:
            return 0.0  # no node reports a size: never guess one from the name
        need_gb = size / GB * self.overhead
        room_gb = memory.available_gb
        ceiling = ceiling_gb(candidate.node.heartbeat.extras)
        if ceiling is not None:
            room_gb = min(room_gb, ceiling)
        points = self.fit_points(room_gb / need_gb) if need_gb > 0 else self.max_points
        if points > 0 and memory.pressure == "warn":
            points /= 2  # it fits, but the node is already short: half the enthusiasm
        return points

    def score(self, ctx: ScoringContext, candidates: Sequence[Candidate]) -> list[float]:
        # the largest size any candidate reports, once per call, stands in for nodes that report 0
        largest: dict[str, int] = {}
        for c in candidates:
            size = c.model_size_bytes
            if size > largest.get(c.model, 0):
                largest[c.model] = size
        return [self.points(c, largest.get(c.model, 0)) for c in candidates]


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_signals(config: Config) -> list[MemoryFitSignal]:
    return [
        MemoryFitSignal(
            max_points=config["FLEET_SCORE_MEMORY_FIT_MAX"],
            overhead=config["FLEET_SCORE_MEMORY_OVERHEAD"],
            comfort=config["FLEET_SCORE_MEMORY_FIT_COMFORT"],
            short_penalty=config["FLEET_SCORE_MEMORY_FIT_SHORT_PENALTY"],
        )
    ]
