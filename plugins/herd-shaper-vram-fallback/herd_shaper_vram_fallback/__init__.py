"""VRAM fallback (opt-in): a model loaded on no node is served by a strictly larger loaded model
of its line, by ``herd_shaper_context.siblings.larger_hot_sibling``'s rule, and said so. The
setting may be changed while the router runs: it is read per request."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from herd_shaper_context.siblings import larger_hot_sibling

from herd_kernel.api import ShapeContext, Substitution
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl
from herd_kernel.models import NodeState, RouteRequest

SETTINGS = (
    Setting(env="FLEET_VRAM_FALLBACK", type=bool, default=False, runtime=True,
            help="When the requested model is loaded on no node, serve it with a strictly larger "
            "loaded model of the same line (qwen2.5:7b -> qwen2.5:14b; never another line, never "
            "a thinking model for a non-thinking one) and say so in X-Fleet-Vram-Fallback."),
)


def vram_substitute(nodes: Iterable[NodeState], wanted: str) -> str | None:
    """A loaded model to serve ``wanted`` with, by the one rule for another model."""
    return larger_hot_sibling(nodes, wanted)


class VramFallback:
    """Registered always; does nothing while ``FLEET_VRAM_FALLBACK`` is off (one dict lookup)."""

    name = "vram_fallback"
    order = 20  # after the context upgrade, which also needs the context

    def substitute(self, route: RouteRequest, ctx: ShapeContext) -> Substitution | None:
        if not ctx.config["FLEET_VRAM_FALLBACK"]:
            return None
        model = vram_substitute(ctx.fleet.nodes.values(), route.model)
        if model is None:
            return None
        return Substitution(model=model, reason="vram_fallback", header="X-Fleet-Vram-Fallback")


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_request_shapers(config: Config) -> Sequence[Any]:
    return [VramFallback()]
