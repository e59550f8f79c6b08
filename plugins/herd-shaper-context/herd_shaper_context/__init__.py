"""Context protection: an ``options.num_ctx`` smaller than the context the chosen node has the
model loaded with is sent as the loaded one (no reload, for this client or anyone else); and the
context upgrade: a ``num_ctx`` the requested model would have to load with, while it is loaded
nowhere, is served by a larger loaded model of its line that has that context. The mode may be
changed while the router runs: both shapers read it per request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from herd_kernel.api import Change, ShapeContext, Shaping, Substitution
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl
from herd_kernel.models import RouteRequest
from herd_shaper_context.siblings import larger_hot_sibling

MODES = ("strip", "warn", "passthrough")

SETTINGS = (
    Setting(env="FLEET_CONTEXT_PROTECTION", type=str, default="strip", choices=MODES,
            runtime=True,
            help="What to do with an options.num_ctx that would reload a loaded model: 'strip' "
            "(the default) sends the loaded context instead when it is bigger (a larger num_ctx "
            "always goes through; "
            "when the model is loaded nowhere, a strictly larger loaded model of the same line "
            "with that context may answer instead), 'warn' (log and record only) or "
            "'passthrough'."),
)


class ContextProtection:
    """Once the node is known: never swap the model, only spare it a reload (``strip``), or only
    say it would have (``warn``)."""

    name = "context_protection"
    order = 10

    def shape(self, route: RouteRequest, body: Mapping[str, Any], decision: Any,
              ctx: ShapeContext) -> Shaping | None:
        mode = ctx.config["FLEET_CONTEXT_PROTECTION"]  # a value of MODES (the setting's choices)
        wanted = route.num_ctx
        if mode == "passthrough":
            return None
        endpoint = decision.endpoint
        if wanted is None or route.api != "ollama" or endpoint is None or endpoint.kind != "ollama":
            return None  # options.num_ctx is Ollama's own: other engines are not reloaded by it
        node = decision.node
        loaded = node.loaded.get(decision.model_key)
        if loaded is None or not loaded.context_length:
            return None  # not loaded: it will load with the requested context anyway
        have = loaded.context_length
        if wanted == have:
            return None
        if wanted > have:
            # the client needs more than is loaded: its num_ctx goes through and Ollama reloads
            ctx.event("context_reload_needed", node_id=node.node_id, model=decision.model,
                      requested=wanted, loaded=have, action="reload")
            return None
        ctx.event("context_num_ctx_would_reload", node_id=node.node_id, model=decision.model,
                  requested=wanted, loaded=have, action=mode)
        if mode != "strip":
            return None
        # Sent as the loaded value, not deleted: a request without num_ctx asks Ollama for its
        # default context, which reloads a model loaded with an explicit one (ollama#18129).
        return Shaping(changes=(Change(
            field="options.num_ctx", old=(body.get("options") or {}).get("num_ctx"), new=have,
            header="X-Fleet-Context-Protection",
            reason=f"num_ctx={wanted} raised to the loaded {have} (no reload)"),))


class ContextUpgrade:
    """Before scoring: a larger hot sibling with the context, when the asked-for model is cold."""

    name = "context_upgrade"
    order = 10

    def substitute(self, route: RouteRequest, ctx: ShapeContext) -> Substitution | None:
        if not route.num_ctx or route.api != "ollama" \
                or ctx.config["FLEET_CONTEXT_PROTECTION"] != "strip":
            return None
        model = larger_hot_sibling(ctx.fleet.nodes.values(), route.model,
                                   min_context=route.num_ctx)
        if model is None:
            return None
        return Substitution(model=model, reason="context_upgrade", header="X-Fleet-Context-Upgrade")


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_request_shapers(config: Config) -> Sequence[Any]:
    return [ContextProtection(), ContextUpgrade()]
