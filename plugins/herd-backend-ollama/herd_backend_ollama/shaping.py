"""What the router changes in a request once it knows the node, and nothing more.

- Router-only fields (``fallback_models``) are stripped.
- Context protection: an ``options.num_ctx`` that differs from the context a model is already
  loaded with forces Ollama to reload it (seconds to minutes, for every other user too). When the
  loaded context is big enough the field is stripped; when it is not, a larger loaded model of the
  same family *on the same node* may serve instead; otherwise the reload is the honest price.
- Thinking models spend most of a ``num_predict`` budget on reasoning, so the budget is inflated
  and the answer's split between thinking and output is reported in headers.

The client's bytes go upstream untouched when none of this applies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from herd_kernel.config import Setting, SettingError
from herd_kernel.models import LoadedModel, RouteRequest
from herd_kernel.pipeline import Outbound
from herd_kernel.scoring import Decision

ROUTER_ONLY_FIELDS = ("fallback_models",)
THINKING_NAMES = re.compile(r"(^|/)(deepseek-r1|qwq|phi4-reasoning|gpt-oss|magistral|openthinker)")

SETTINGS = (
    Setting(env="FLEET_CONTEXT_PROTECTION", type=str, default="strip",
            help="What to do with an options.num_ctx that would reload a loaded model: 'strip' it "
            "(or move to a larger loaded model of the same family on that node), 'warn' (log and "
            "record only) or 'passthrough'."),
    Setting(env="FLEET_THINKING_OVERHEAD", type=float, default=4.0,
            help="A thinking model's num_predict / max_tokens is multiplied by this, since most of "
            "the budget goes to reasoning."),
    Setting(env="FLEET_THINKING_MIN_PREDICT", type=int, default=1024,
            help="Lower bound of an inflated thinking budget, in tokens."),
)

Event = Callable[..., None]


def is_thinking(decision: Decision) -> bool:
    available = decision.node.available.get(decision.model_key)
    if available is not None and available.capabilities:
        return "thinking" in available.capabilities
    return bool(THINKING_NAMES.search(decision.model_key))


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
        if route.api == "ollama" and route.num_ctx is not None and self.mode != "passthrough":
            model = self._protect_context(route, decision, edit, headers) or model
        meter = None
        if route.num_predict is not None and route.num_predict > 0 and is_thinking(decision):
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
            hooks = {"on_complete": meter.whole, "observe": meter.frame, "summary": meter.summary}
        body_out = raw if changed is None else json.dumps(changed).encode()
        return Outbound(body=body_out, headers=headers, **hooks)

    def _protect_context(
        self,
        route: RouteRequest,
        decision: Decision,
        edit: Callable[[], dict[str, Any]],
        headers: dict[str, str],
    ) -> str | None:
        """Returns the model to use instead, when a larger loaded sibling is chosen."""
        node = decision.node
        loaded = node.loaded.get(decision.model_key)
        wanted = route.num_ctx
        if loaded is None or not loaded.context_length or wanted is None:
            return None  # not loaded: it will load with the requested context anyway
        have = loaded.context_length
        if wanted == have:
            return None
        if wanted < have:
            self.event("context_num_ctx_would_reload", node_id=node.node_id,
                       model=decision.model, requested=wanted, loaded=have, action=self.mode)
            if self.mode == "strip":
                del edit()["options"]["num_ctx"]
                headers["X-Fleet-Context-Protection"] = f"stripped num_ctx={wanted} (loaded {have})"
            return None
        sibling = _larger_sibling(loaded, node.loaded.values(), wanted)
        if sibling is None:
            self.event("context_reload_needed", node_id=node.node_id, model=decision.model,
                       requested=wanted, loaded=have, action="reload")
            return None
        self.event("context_upgrade", node_id=node.node_id, model=decision.model,
                   upgraded_to=sibling.name, requested=wanted, loaded=sibling.context_length,
                   action=self.mode)
        if self.mode != "strip":
            return None
        body = edit()
        body["model"] = sibling.name
        del body["options"]["num_ctx"]
        headers["X-Fleet-Context-Upgrade"] = f"{decision.model} -> {sibling.name}"
        headers["X-Fleet-Served-Model"] = sibling.name
        return sibling.name


def _family(model: LoadedModel) -> str:
    return str(model.details.get("family") or "")


def _larger_sibling(current: LoadedModel, loaded: Any, wanted: int) -> LoadedModel | None:
    family = _family(current)
    if not family:
        return None
    fits = [
        m for m in loaded
        if m.name != current.name and _family(m) == family and m.context_length >= wanted
    ]
    # the smallest sibling that fits: enough context without taking the biggest model
    return min(fits, key=lambda m: (m.size_bytes, m.name), default=None)


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
