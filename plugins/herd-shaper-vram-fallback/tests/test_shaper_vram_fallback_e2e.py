"""VRAM fallback over real sockets: a real router, real node agents, simulated Ollama nodes."""

from __future__ import annotations

from herd_sim.testing import chat, herd_over, loaded_on, post, profile

from herd_kernel.testing import wait_for

QWEN = "qwen2.5:7b"




async def test_vram_fallback_keeps_to_the_line(sims, herd_router, herd_agent):
    fleet = await sims(profile("solo", ["llama3.2:1b", "llama3.2:3b", "qwen2.5-coder:14b", QWEN],
                               loaded=["llama3.2:3b", "qwen2.5-coder:14b"]))
    router = await herd_over(fleet, herd_router, herd_agent, env={"FLEET_VRAM_FALLBACK": "1"})
    await wait_for(lambda: "llama3.2:3b" in loaded_on(router, "solo"))

    status, headers, payload = await post(router.url, "/api/chat", chat(
        QWEN, options={"num_predict": 4}))
    assert status == 200 and payload["model"] == QWEN  # qwen2.5-coder is another line
    assert "X-Fleet-Vram-Fallback" not in headers

    status, headers, payload = await post(router.url, "/api/chat", chat(
        "llama3.2:1b", options={"num_predict": 4}))
    assert status == 200 and payload["model"] == "llama3.2:3b"
    assert headers["X-Fleet-Vram-Fallback"] == "llama3.2:1b -> llama3.2:3b"
    assert headers["X-Fleet-Served-Model"] == "llama3.2:3b"
    assert router.services.recent_traces[-1].details["substitution"]["reason"] == "vram_fallback"
