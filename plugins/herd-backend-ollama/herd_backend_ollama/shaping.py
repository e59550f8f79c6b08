"""What the router changes in a request once it knows the node, and nothing more.

- Router-only fields (``fallback_models``) are stripped.
- Context protection: an ``options.num_ctx`` that differs from the context a model is already
  loaded with forces Ollama to reload it (seconds to minutes, for every other user too). When the
  loaded context is bigger, the request is sent with the loaded context instead (it gets at least
  what it asked for, and no reload); a larger one goes through unchanged (the client needs that
  context, and the reload is its honest price). Whether
  another model may answer is decided before routing, by ``substitutes.larger_hot_sibling``.
- Thinking models spend most of a ``num_predict`` budget on reasoning, so when the model will
  think (it can, and the request did not turn thinking off) the budget is inflated and the
  answer's split between thinking and output is reported in headers.

The client's bytes go upstream untouched when none of this applies.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from herd_backend_ollama.substitutes import thinks
from herd_kernel.api import Decision
from herd_kernel.config import Setting, SettingError
from herd_kernel.models import RouteRequest, normalize_model
from herd_kernel.pipeline import Outbound

ROUTER_ONLY_FIELDS = ("fallback_models",)

SETTINGS = (
    Setting(env="FLEET_CONTEXT_PROTECTION", type=str, default="strip",
            help="What to do with an options.num_ctx that would reload a loaded model: 'strip' "
            "(the default) sends the loaded context instead when it is bigger (a larger num_ctx "
            "always goes through; "
            "when the model is loaded nowhere, a strictly larger loaded model of the same line "
            "with that context may answer instead), 'warn' (log and record only) or "
            "'passthrough'."),
    Setting(env="FLEET_THINKING_OVERHEAD", type=float, default=4.0,
            help="A thinking model's num_predict / max_tokens is multiplied by this, since most of "
            "the budget goes to reasoning; not when the request turns thinking off (think: false, "
            "reasoning_effort: none)."),
    Setting(env="FLEET_THINKING_MIN_PREDICT", type=int, default=1024,
            help="Lower bound of an inflated thinking budget, in tokens."),
)

Event = Callable[..., None]


def is_thinking(decision: Decision) -> bool:
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


class Shaper:
    def __init__(self, config: Mapping[str, Any], event: Event) -> None:
        mode = str(config["FLEET_CONTEXT_PROTECTION"]).lower()
        if mode not in ("strip", "warn", "passthrough"):
            raise SettingError(
                f"FLEET_CONTEXT_PROTECTION={mode!r}: expected strip, warn or passthrough"
            )
        self.mode = mode
        self.overhead = float(config["FLEET_THINKING_OVERHEAD"])
        self.min_predict = int(config["FLEET_THINKING_MIN_PREDICT"])
        self.event = event

    def outbound(
        self, route: RouteRequest, raw: bytes, body: dict[str, Any], decision: Decision
    ) -> Outbound:
        changed: dict[str, Any] | None = None
        headers: dict[str, str] = {}

        def edit() -> dict[str, Any]:
            nonlocal changed
            if changed is None:
                changed = {k: v for k, v in body.items() if k not in ROUTER_ONLY_FIELDS}
                if isinstance(changed.get("options"), dict):
                    changed["options"] = dict(changed["options"])
            return changed

        if any(k in body for k in ROUTER_ONLY_FIELDS):
            edit()
        model = decision.model
        if model != route.model:
            edit()["model"] = model
        notes: dict[str, Any] = {}  # what was changed, for the trace's details
        if route.api == "ollama" and route.num_ctx is not None and self.mode != "passthrough":
            self._protect_context(route, decision, edit, headers, notes)
        meter = None
        if (
            route.num_predict is not None
            and route.num_predict > 0
            and is_thinking(decision)
            and not thinking_off(route.api, body, model)
        ):
            budget = max(self.min_predict, int(route.num_predict * self.overhead))
            if route.api == "ollama":
                edit().setdefault("options", {})["num_predict"] = budget
            else:
                key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
                edit()[key] = budget
            headers["X-Thinking-Budget"] = str(budget)
            meter = ThinkingMeter(route.api, budget)
        hooks: dict[str, Any] = {}
        if meter is not None:
            hooks = {"on_complete": meter.whole, "observe": meter.frame}
            hooks["summary"] = (lambda: {**notes, **meter.summary()}) if notes else meter.summary
        elif notes:
            hooks = {"summary": lambda: notes}
        body_out = raw if changed is None else json.dumps(changed).encode()
        return Outbound(body=body_out, headers=headers, **hooks)

    def _protect_context(
        self,
        route: RouteRequest,
        decision: Decision,
        edit: Callable[[], dict[str, Any]],
        headers: dict[str, str],
        notes: dict[str, Any],
    ) -> None:
        """Strip a num_ctx the loaded model does not need; never swap the model here."""
        node = decision.node
        loaded = node.loaded.get(decision.model_key)
        wanted = route.num_ctx
        if loaded is None or not loaded.context_length or wanted is None:
            return  # not loaded: it will load with the requested context anyway
        have = loaded.context_length
        if wanted == have:
            return
        if wanted > have:
            # the client needs more than is loaded: its num_ctx goes through and Ollama reloads
            self.event("context_reload_needed", node_id=node.node_id, model=decision.model,
                       requested=wanted, loaded=have, action="reload")
            return
        self.event("context_num_ctx_would_reload", node_id=node.node_id,
                   model=decision.model, requested=wanted, loaded=have, action=self.mode)
        if self.mode == "strip":
            # Sent as the loaded value, not deleted: a request without num_ctx asks Ollama for its
            # default context, which reloads a model loaded with an explicit one (ollama#18129).
            edit()["options"]["num_ctx"] = have
            note = f"num_ctx={wanted} raised to the loaded {have} (no reload)"
            headers["X-Fleet-Context-Protection"] = notes["context_protection"] = note


class ThinkingMeter:
    """How a thinking model spent its budget: thinking vs output tokens, share of the budget used,
    why it stopped. Fed a whole answer (headers for the client) or streamed frames (the trace)."""

    def __init__(self, api: str, budget: int) -> None:
        self.api = api
        self.budget = budget
        self.thinking_chars = 0
        self.total = 0
        self.reason = ""

    def _take(self, obj: Any, *, stream: bool) -> None:
        if not isinstance(obj, dict):
            return
        if self.api == "openai":
            for choice in obj.get("choices") or []:
                part = choice.get("delta" if stream else "message") or {}
                self.thinking_chars += len(part.get("reasoning") or part.get("reasoning_content") or "")
                self.reason = choice.get("finish_reason") or self.reason
            usage = obj.get("usage")
            if isinstance(usage, dict):
                self.total = usage.get("completion_tokens") or self.total
        else:
            message = obj.get("message") or {}
            self.thinking_chars += len(message.get("thinking") or obj.get("thinking") or "")
            self.total = obj.get("eval_count") or self.total
            self.reason = obj.get("done_reason") or self.reason

    def frame(self, frame: bytes) -> None:
        """One relayed NDJSON line or SSE event (only thinking-model streams pay for parsing)."""
        for line in frame.split(b"\n"):
            line = line.removeprefix(b"data: ").strip()
            if line and line != b"[DONE]":
                try:
                    self._take(json.loads(line), stream=True)
                except ValueError:
                    pass

    def whole(self, payload: bytes) -> Mapping[str, str]:
        try:
            self._take(json.loads(payload), stream=False)
        except ValueError:
            return {}
        summary = self.summary()
        return {
            "X-Thinking-Tokens": str(summary["thinking_tokens"]),
            "X-Output-Tokens": str(summary["output_tokens"]),
            "X-Budget-Used": f"{summary['budget_used_pct']:.1f}%",
            "X-Done-Reason": str(summary["done_reason"]),
        }

    def summary(self) -> dict[str, Any]:
        # characters / 4: Ollama counts thinking and answer tokens together in eval_count
        thinking = min(self.total, self.thinking_chars // 4) if self.thinking_chars else 0
        return {
            "thinking_tokens": thinking,
            "output_tokens": max(0, self.total - thinking),
            "budget": self.budget,
            "budget_used_pct": round(100.0 * self.total / self.budget, 1),
            "done_reason": self.reason,
        }
