"""Model thermal state: a model already in memory (hot) answers at once, one unloaded in the last
half hour (warm) is likely still in the page cache, one only on disk (cold) must load."""

from __future__ import annotations

from collections.abc import Sequence

from herd_kernel.api import Candidate, ScoringContext
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl

SETTINGS = (
    Setting(env="FLEET_SCORE_MODEL_HOT", type=float, default=50.0,
            help="Points when the model is loaded on the node (hot)."),
    Setting(env="FLEET_SCORE_MODEL_WARM", type=float, default=30.0,
            help="Points when the model left the node's memory within the warm window."),
    Setting(env="FLEET_SCORE_MODEL_COLD", type=float, default=10.0,
            help="Points when the model is only on the node's disk (cold)."),
    Setting(env="FLEET_SCORE_WARM_WINDOW", type=float, default=1800.0,
            help="Seconds after an unload during which a model still counts as warm."),
)


class ThermalSignal:
    name = "thermal"
    weight = 1.0
    low = 0.0

    def __init__(self, hot: float, warm: float, cold: float, warm_window: float) -> None:
        self.hot, self.warm, self.cold, self.warm_window = hot, warm, cold, warm_window
        self.high = max(hot, warm, cold, 0.0)

    def points(self, candidate: Candidate) -> float:
        if candidate.loaded is not None:
            return self.hot
        ago = candidate.unloaded_ago
        if ago is not None and ago <= self.warm_window:
            return self.warm
        if candidate.available is not None:
            return self.cold
        return 0.0

    def score(self, ctx: ScoringContext, candidates: Sequence[Candidate]) -> list[float]:
        return [self.points(c) for c in candidates]


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_signals(config: Config) -> list[ThermalSignal]:
    return [
        ThermalSignal(
            hot=config["FLEET_SCORE_MODEL_HOT"],
            warm=config["FLEET_SCORE_MODEL_WARM"],
            cold=config["FLEET_SCORE_MODEL_COLD"],
            warm_window=config["FLEET_SCORE_WARM_WINDOW"],
        )
    ]
