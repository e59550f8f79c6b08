"""How a thinking model spent its budget, read from the answer the client gets."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


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
