"""Queue depth: work already waiting or running for the model on a node, per parallel slot, plus
a discounted share of the node's work on other models. A busy node costs points so that a hot but
saturated node can lose to an idle one that has to warm up."""

from __future__ import annotations

from collections.abc import Sequence

from herd_kernel.api import Candidate, ScoringContext
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl

SETTINGS = (
    Setting(env="FLEET_SCORE_QUEUE_DEPTH_PENALTY_PER", type=float, default=20.0,
            help="Penalty points per request queued or running for the model, per parallel slot."),
    Setting(env="FLEET_SCORE_QUEUE_DEPTH_MAX_PENALTY", type=float, default=80.0,
            help="Largest penalty queue depth can give (a positive number of points)."),
    Setting(env="FLEET_SCORE_QUEUE_OTHER_MODEL_FACTOR", type=float, default=0.5,
            help="How much a request running for another model on the same node counts, as a "
                 "fraction of one for this model (they share the machine, not the slots)."),
)


def effective_depth(candidate: Candidate, other_factor: float) -> float:
    depth = max(0, candidate.pending) + max(0, candidate.in_flight)
    other = max(0, candidate.node_in_flight - candidate.in_flight) * other_factor
    return (depth + other) / candidate.slots


class QueueDepthSignal:
    name = "queue-depth"
    weight = 1.0
    high = 0.0

    def __init__(self, per: float, max_penalty: float, other_factor: float) -> None:
        # the settings are magnitudes; a negative one would turn the penalty into a reward
        self.per = abs(per)
        self.max_penalty = abs(max_penalty)
        self.other_factor = max(0.0, other_factor)
        self.low = -self.max_penalty

    def points(self, candidate: Candidate) -> float:
        eff = effective_depth(candidate, self.other_factor)
        return -min(self.max_penalty, self.per * eff) if eff > 0 else 0.0

    def score(self, ctx: ScoringContext, candidates: Sequence[Candidate]) -> list[float]:
        return [self.points(c) for c in candidates]


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_signals(config: Config) -> list[QueueDepthSignal]:
    return [
        QueueDepthSignal(
            per=config["FLEET_SCORE_QUEUE_DEPTH_PENALTY_PER"],
            max_penalty=config["FLEET_SCORE_QUEUE_DEPTH_MAX_PENALTY"],
            other_factor=config["FLEET_SCORE_QUEUE_OTHER_MODEL_FACTOR"],
        )
    ]
