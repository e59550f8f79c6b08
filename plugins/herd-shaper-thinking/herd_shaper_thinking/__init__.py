"""Thinking budgets: a thinking model spends most of a ``num_predict`` / ``max_tokens`` budget on
reasoning, so when the model will think (it can, and the request did not turn thinking off) the
budget is raised, and the answer's split between thinking and output is reported (``meter``). Its
settings may be changed while the router runs: they are read per request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from herd_shaper_context.siblings import thinks

from herd_kernel.api import Change, ShapeContext, Shaping
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl
from herd_kernel.models import RouteRequest, normalize_model
from herd_shaper_thinking.meter import ThinkingMeter

SETTINGS = (
    Setting(env="FLEET_THINKING_OVERHEAD", type=float, default=4.0, runtime=True,
            help="A thinking model's num_predict / max_tokens is multiplied by this, since most of "
            "the budget goes to reasoning; not when the request turns thinking off (think: false, "
            "reasoning_effort: none)."),
    Setting(env="FLEET_THINKING_MIN_PREDICT", type=int, default=1024, runtime=True,
            help="Lower bound of an inflated thinking budget, in tokens."),
)


def is_thinking(decision: Any) -> bool:
    """Whether the chosen model can think: the node's reported capabilities (from its /api/tags
    or /api/show), else its name."""
    available = decision.node.available.get(decision.model_key)
    return thinks(decision.model_key, available.capabilities if available is not None else None)


def thinking_off(api: str, body: Mapping[str, Any], model: str) -> bool:
    """Whether the request turns thinking off: Ollama ``think: false`` (which gpt-oss ignores: it
    takes levels only), OpenAI ``reasoning_effort`` / ``reasoning.effort`` of ``"none"``."""
    if api == "ollama":
        return body.get("think") is False and not normalize_model(model).startswith("gpt-oss")
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    return body.get("reasoning_effort") == "none" or effort == "none"


class ThinkingBudget:
    """Raises the budget in the client's own field: Ollama ``options.num_predict``, OpenAI
    ``max_tokens`` / ``max_completion_tokens``, whichever engine serves it."""

    name = "thinking_budget"
    order = 50

    def shape(self, route: RouteRequest, body: Mapping[str, Any], decision: Any,
              ctx: ShapeContext) -> Shaping | None:
        if route.num_predict is None or route.num_predict <= 0 or not is_thinking(decision) \
                or thinking_off(route.api, body, decision.model):
            return None
        config = ctx.config
        budget = max(int(config["FLEET_THINKING_MIN_PREDICT"]),
                     int(route.num_predict * float(config["FLEET_THINKING_OVERHEAD"])))
        if route.api == "ollama":
            options = body.get("options")
            field = "options.num_predict"
            old = options.get("num_predict") if isinstance(options, dict) else None
        else:
            field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
            old = body.get(field)
        change = Change(field=field, old=old, new=budget, header="X-Thinking-Budget",
                        reason=str(budget))
        return Shaping(changes=(change,), meter=ThinkingMeter(route.api, budget))


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_request_shapers(config: Config) -> Sequence[Any]:
    return [ThinkingBudget()]
