"""Context fit: prefer nodes that can serve the request's context (prompt plus answer) as the model
is loaded there, over nodes that would truncate the prompt or have to reload the model first."""

from __future__ import annotations

from collections.abc import Sequence

from herd_kernel.api import Candidate, ScoringContext
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl
from herd_kernel.models import RouteRequest

SETTINGS = (
    Setting(
        env="FLEET_SCORE_CONTEXT_FIT_MAX",
        type=float,
        default=15.0,
        help="Most points context fit gives (a loaded context at least twice what the "
        "request needs) or takes (one too small, which would truncate or reload).",
    ),
    Setting(
        env="FLEET_SCORE_CONTEXT_OUTPUT_RESERVE",
        type=int,
        default=512,
        help="Tokens of answer assumed when the request sets no positive num_predict "
        "(max_tokens), added to the prompt estimate to get the context it needs.",
    ),
    Setting(
        env="FLEET_SCORE_CONTEXT_RELOAD_PENALTY",
        type=float,
        default=-10.0,
        help="Points for a node whose loaded context differs from the request's num_ctx and "
        "is too small for it, so Ollama would reload the model before answering.",
    ),
)


def _positive_int(value: object) -> int | None:
    # bool is an int in Python, but num_ctx=true means nothing to Ollama
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def tokens_needed(request: RouteRequest, output_reserve: int) -> int:
    """Context the request needs: its prompt, its answer budget, and at least the num_ctx it set
    (Ollama allocates what the client asks for, whatever the prompt)."""
    prompt = _positive_int(request.estimated_tokens) or 0
    answer = _positive_int(request.num_predict) or output_reserve
    need = prompt + answer
    num_ctx = _positive_int(request.num_ctx)
    return max(need, num_ctx) if num_ctx is not None else need


class ContextFitSignal:
    """Loaded: ``-max`` below the need, ``max * (L / need - 1)`` up to twice it, ``max`` beyond;
    ``reload_penalty`` when the request's num_ctx differs from a loaded context too small for it.
    Not loaded: ``-max`` when the model's training context is below the need, else 0."""

    name = "context-fit"
    # The points already are the weight; an operator tunes FLEET_SCORE_CONTEXT_FIT_MAX instead.
    weight = 1.0

    def __init__(self, max_points: float, output_reserve: int, reload_penalty: float) -> None:
        self.max_points = max_points
        self.output_reserve = max(0, output_reserve)  # a negative reserve would hide the prompt
        self.reload_penalty = reload_penalty
        # The true range: every value is 0, +-max, between them, or the reload penalty.
        values = (0.0, max_points, -max_points, reload_penalty)
        self.low = min(values)
        self.high = max(values)

    def points(self, candidate: Candidate, need: int, num_ctx: int | None) -> float:
        loaded = candidate.loaded
        if loaded is not None:
            length = loaded.context_length
            if length <= 0:
                return 0.0  # /api/ps did not say: no basis to judge
            if num_ctx is not None and num_ctx != length:
                # Ollama reloads a model whose context differs from the requested num_ctx. When
                # the loaded context already covers the need, the router's context protection
                # (FLEET_CONTEXT_PROTECTION=strip) deletes num_ctx instead, so no reload is charged.
                return 0.0 if length >= need else self.reload_penalty
            ratio = length / need
            if ratio < 1.0:
                return -self.max_points  # the prompt would be truncated
            # Headroom pays up to twice the need; beyond that, more context buys nothing.
            return self.max_points * min(1.0, ratio - 1.0)
        available = candidate.available
        if available is not None and 0 < available.context_length < need:
            # The model cannot hold this request at any num_ctx, wherever it loads.
            return -self.max_points
        # Not loaded: Ollama will load it with whatever context the request asks for.
        return 0.0

    def score(self, ctx: ScoringContext, candidates: Sequence[Candidate]) -> list[float]:
        request = getattr(ctx, "request", None)
        if request is None or not candidates:
            return [0.0] * len(candidates)
        # Per request, not per candidate: the need depends on the request alone.
        need = tokens_needed(request, self.output_reserve)
        if need <= 0:
            return [0.0] * len(candidates)
        num_ctx = _positive_int(request.num_ctx)
        return [self.points(c, need, num_ctx) for c in candidates]


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_signals(config: Config) -> list[ContextFitSignal]:
    return [
        ContextFitSignal(
            max_points=config["FLEET_SCORE_CONTEXT_FIT_MAX"],
            output_reserve=config["FLEET_SCORE_CONTEXT_OUTPUT_RESERVE"],
            reload_penalty=config["FLEET_SCORE_CONTEXT_RELOAD_PENALTY"],
        )
    ]
