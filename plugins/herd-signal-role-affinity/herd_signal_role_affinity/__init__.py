"""Role affinity: large models belong on the fleet's most powerful machines and small models on
its lighter ones, so the big machines stay free for the models only they can hold."""

from __future__ import annotations

import math
from collections.abc import Sequence

from herd_kernel.api import Candidate, ScoringContext
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl

# The node sensors report memory in GiB (bytes / 1024**3); model sizes are read the same way so
# that a "20 GB" threshold means the same unit on both sides.
GIB = 1024**3

SETTINGS = (
    Setting(
        env="FLEET_SCORE_ROLE_AFFINITY_MAX",
        type=float,
        default=5.0,
        help="Most points role affinity gives: a large model on the candidate with the most "
        "memory, or a small model on the candidate with the least.",
    ),
    Setting(
        env="FLEET_SCORE_ROLE_LARGE_THRESHOLD_GB",
        type=float,
        default=20.0,
        help="A model at least this many GB (as the nodes report it) is large and leans to "
        "the machines with the most memory.",
    ),
    Setting(
        env="FLEET_SCORE_ROLE_SMALL_THRESHOLD_GB",
        type=float,
        default=8.0,
        help="A model at most this many GB (as the nodes report it) is small and leans to "
        "the machines with the least memory.",
    ),
)


def node_memory_gb(candidate: Candidate) -> float:
    """The node's total memory, 0 when it did not report one (the heartbeat's default)."""
    total = candidate.node.heartbeat.memory.total_gb
    return total if isinstance(total, int | float) and math.isfinite(total) and total > 0 else 0.0


class RoleAffinitySignal:
    """``max * share`` where share depends on the model's size class and on the node's memory
    relative to the largest candidate (``rel`` in [0, 1]): large ``rel``, small ``1 - rel``,
    in between ``0.5 * rel``."""

    name = "role-affinity"
    # The points already are the weight; an operator tunes FLEET_SCORE_ROLE_AFFINITY_MAX instead.
    weight = 1.0

    def __init__(self, max_points: float, large_gb: float, small_gb: float) -> None:
        self.max_points = max_points
        self.large_gb = large_gb
        self.small_gb = small_gb
        # Every share lies in [0, 1]; spanning 0 keeps a negative setting meaningful.
        self.low = min(0.0, max_points)
        self.high = max(0.0, max_points)

    def share(self, size_gb: float, rel: float) -> float:
        """The fraction of ``max_points`` a model of ``size_gb`` earns on a node of memory ``rel``."""
        # Large is tested first so that thresholds configured the wrong way round still give
        # every size exactly one class.
        if size_gb >= self.large_gb:
            return rel
        if size_gb <= self.small_gb:
            # The least powerful candidate that survived elimination (so has room for the model)
            # is the one whose use costs the fleet least.
            return 1.0 - rel
        # Mid-size models lean gently to bigger machines: they run better there, but should not
        # crowd out large models as hard as a large model would.
        return 0.5 * rel

    def score(self, ctx: ScoringContext, candidates: Sequence[Candidate]) -> list[float]:
        if not candidates:
            return []
        # Fleet-wide figures once per call, so the signal stays linear in the candidates.
        sizes = [c.model_size_bytes for c in candidates]
        memories = [node_memory_gb(c) for c in candidates]
        largest_size = max(sizes)
        largest_memory = max(memories)
        if largest_size <= 0 or largest_memory <= 0:
            # No node reports the model's size (or any memory). The reference guessed sizes from
            # names, once putting a 480B model at 10 GB; a wrong class is worse than none.
            return [0.0] * len(candidates)
        points: list[float] = []
        for size, memory in zip(sizes, memories, strict=True):
            if memory <= 0:
                points.append(0.0)  # unknown machine: neither favoured nor pushed away
                continue
            # A node that has the model but did not report its size uses what another node saw.
            size_gb = (size or largest_size) / GIB
            points.append(self.max_points * self.share(size_gb, memory / largest_memory))
        return points


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_signals(config: Config) -> list[RoleAffinitySignal]:
    return [
        RoleAffinitySignal(
            max_points=config["FLEET_SCORE_ROLE_AFFINITY_MAX"],
            large_gb=config["FLEET_SCORE_ROLE_LARGE_THRESHOLD_GB"],
            small_gb=config["FLEET_SCORE_ROLE_SMALL_THRESHOLD_GB"],
        )
    ]
