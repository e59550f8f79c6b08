"""Thinking budgets over real sockets: a real router, real node agents, simulated Ollama nodes."""

from __future__ import annotations

import pytest
from herd_sim.testing import chat, herd_over, post, profile

from herd_kernel.testing import wait_for

QWEN = "qwen2.5:7b"




# --- thinking budgets ---------------------------------------------------------------------------


@pytest.fixture
async def old_ollama(sims, herd_router, herd_agent):
    """A node whose /api/tags lists no capabilities (older Ollama): only /api/show says."""
    fleet = await sims(profile("old", ["qwen3:8b", "deepseek-r1:7b", "llama3.2:3b"],
                               tags_capabilities=False))
    router = await herd_over(fleet, herd_router, herd_agent)
    def learnt() -> bool:
        available = router.services.fleet.nodes["old"].available  # replaced by each heartbeat
        return len(available) == 3 and all(m.capabilities for m in available.values())

    await wait_for(learnt)
    return fleet, router


async def test_thinking_capability_comes_from_api_show_once_per_model(old_ollama, herd_agent):
    fleet, router = old_ollama
    available = router.services.fleet.nodes["old"].available
    assert "thinking" in available["qwen3:8b"].capabilities
    assert "thinking" not in available["llama3.2:3b"].capabilities
    beats = router.services.fleet.nodes["old"].heartbeats
    await wait_for(lambda: router.services.fleet.nodes["old"].heartbeats >= beats + 3)
    assert fleet.nodes["old"].stats["requests"]["/api/show"] == 3  # once each, not per heartbeat

    status, headers, payload = await post(router.url, "/api/chat", chat(
        "qwen3:8b", options={"num_predict": 5}))
    assert status == 200, payload
    assert headers["X-Thinking-Budget"] == "1024"  # qwen3 is not in the name list's old form
    assert payload["message"]["thinking"]


@pytest.mark.parametrize("path,body,done", [
    ("/api/chat", {"think": False, "options": {"num_predict": 5}},
     lambda p: (p["eval_count"], p["done_reason"])),
    ("/v1/chat/completions", {"reasoning_effort": "none", "max_tokens": 5},
     lambda p: (p["usage"]["completion_tokens"], p["choices"][0]["finish_reason"])),
    ("/v1/chat/completions", {"reasoning": {"effort": "none"}, "max_tokens": 5},
     lambda p: (p["usage"]["completion_tokens"], p["choices"][0]["finish_reason"])),
])
async def test_no_thinking_budget_when_thinking_is_off(old_ollama, path, body, done):
    _, router = old_ollama
    status, headers, payload = await post(router.url, path, chat("deepseek-r1:7b", **body))
    assert status == 200, payload
    assert done(payload) == (5, "length")
    assert "X-Thinking-Budget" not in headers
