"""Preferred nodes: a scoring signal that gives fixed points to the nodes named in
``FLEET_SCORE_PREFER_NODES``, e.g. the quiet desktop you would rather load than the laptop.

This is Herd's plugin template: copy the directory, rename it, change the formula.
"""

from __future__ import annotations

from collections.abc import Sequence

from herd_kernel.api import Candidate, ScoringContext
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl

SETTINGS = (
    Setting(
        env="FLEET_SCORE_PREFER_NODES",
        type=str,
        default="",
        help="Comma-separated node ids that get FLEET_SCORE_PREFER_POINTS extra points; "
        "empty prefers none.",
    ),
    Setting(
        env="FLEET_SCORE_PREFER_POINTS",
        type=float,
        default=25.0,
        help="Points a node listed in FLEET_SCORE_PREFER_NODES gets (negative to avoid it).",
    ),
)


def parse_nodes(text: str) -> frozenset[str]:
    """``"a, b,,c "`` -> ``{"a", "b", "c"}``: people type spaces and trailing commas in env vars."""
    return frozenset(part.strip() for part in text.split(",") if part.strip())


class PreferredNodesSignal:
    """``points`` for a candidate whose node id is listed, 0 for every other candidate."""

    name = "preferred-nodes"
    # The points already are the weight; an operator tunes FLEET_SCORE_PREFER_POINTS instead.
    weight = 1.0

    def __init__(self, nodes: frozenset[str], points: float) -> None:
        self.nodes = nodes
        self.points = points
        # The kernel clamps every score to [low, high]; spanning 0 and points lets a negative
        # setting push nodes away instead of being clamped to nothing.
        self.low = min(0.0, points)
        self.high = max(0.0, points)

    def score(self, ctx: ScoringContext, candidates: Sequence[Candidate]) -> list[float]:
        # Pure and synchronous: called for every request on the hot path, so no I/O and no state.
        return [self.points if c.node_id in self.nodes else 0.0 for c in candidates]


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_signals(config: Config) -> list[PreferredNodesSignal]:
    # Read the settings once, at start-up, so scoring a request does no parsing.
    return [
        PreferredNodesSignal(
            nodes=parse_nodes(config["FLEET_SCORE_PREFER_NODES"]),
            points=config["FLEET_SCORE_PREFER_POINTS"],
        )
    ]
