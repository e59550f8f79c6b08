"""num_ctx means what the client said, over real sockets: a real router, real node agents and
simulated Ollama nodes (whose own /api/ps and counters witness what reached a node)."""

from __future__ import annotations

from herd_sim.testing import chat, contexts, herd_over, load, loaded_on, post, profile

from herd_kernel.testing import wait_for

QWEN = "qwen2.5:7b"




# --- num_ctx and the model that answers ---------------------------------------------------------


async def test_a_larger_num_ctx_is_served_by_the_model_asked_for_not_a_same_family_one(
    sims, herd_router, herd_agent
):
    # qwen2.5:7b and deepseek-r1:7b share Ollama's details.family "qwen2": not the same model
    fleet = await sims(profile("solo", [QWEN, "deepseek-r1:7b"], loaded=[QWEN]))
    solo = fleet.nodes["solo"]
    await load(solo, "deepseek-r1:7b", 32768)
    router = await herd_over(fleet, herd_router, herd_agent)
    await wait_for(lambda: loaded_on(router, "solo") == {QWEN: 4096, "deepseek-r1:7b": 32768})

    status, headers, payload = await post(router.url, "/api/chat", chat(
        QWEN, options={"num_ctx": 16384, "num_predict": 8}))
    assert status == 200, payload
    assert payload["model"] == QWEN and "thinking" not in payload["message"]
    assert headers["X-Fleet-Served-Model"] == QWEN
    assert "X-Fleet-Context-Upgrade" not in headers and "X-Fleet-Context-Protection" not in headers
    assert contexts(solo)[QWEN] == 16384  # the client's num_ctx reached Ollama unchanged
    trace = router.services.recent_traces[-1]
    assert trace.model == QWEN and trace.original_model == QWEN
    assert router.services.events[-1]["kind"] == "context_reload_needed"


async def test_routing_prefers_the_node_holding_the_model_at_that_context(
    sims, herd_router, herd_agent
):
    # "a-tight" wins every tie (lowest id): only context fit can send the request to "b-roomy"
    fleet = await sims(profile("a-tight", [QWEN], loaded=[QWEN]),
                       profile("b-roomy", [QWEN], loaded=[QWEN]))
    await load(fleet.nodes["b-roomy"], QWEN, 32768)
    router = await herd_over(fleet, herd_router, herd_agent)
    await wait_for(lambda: loaded_on(router, "b-roomy") == {QWEN: 32768})
    loads = {name: node.stats["loads"] for name, node in fleet.nodes.items()}

    status, headers, payload = await post(router.url, "/api/chat", chat(
        QWEN, options={"num_ctx": 16384, "num_predict": 4}))
    assert status == 200, payload
    assert headers["X-Fleet-Node"] == "b-roomy"
    note = "num_ctx=16384 raised to the loaded 32768 (no reload)"
    assert headers["X-Fleet-Context-Protection"] == note
    assert "context-fit" in headers["X-Fleet-Score-Breakdown"]
    assert {name: node.stats["loads"] for name, node in fleet.nodes.items()} == loads
    assert contexts(fleet.nodes["b-roomy"])[QWEN] == 32768  # not reloaded, not shrunk
    assert router.services.recent_traces[-1].details["context_protection"] == note


async def test_another_model_answers_only_when_the_asked_one_is_cold_everywhere(
    sims, herd_router, herd_agent
):
    fleet = await sims(profile("solo", [QWEN, "qwen2.5:14b", "deepseek-r1:7b"]))
    solo = fleet.nodes["solo"]
    await load(solo, "deepseek-r1:7b", 32768)
    await load(solo, "qwen2.5:14b", 32768)
    router = await herd_over(fleet, herd_router, herd_agent)
    await wait_for(lambda: "qwen2.5:14b" in loaded_on(router, "solo"))

    status, headers, payload = await post(router.url, "/api/chat", chat(
        QWEN, options={"num_ctx": 16384, "num_predict": 4}))
    assert status == 200, payload
    assert headers["X-Fleet-Context-Upgrade"] == f"{QWEN} -> qwen2.5:14b"
    assert headers["X-Fleet-Served-Model"] == payload["model"] == "qwen2.5:14b"
    assert QWEN not in contexts(solo)  # the cold model was not loaded
    trace = router.services.recent_traces[-1]
    assert (trace.model, trace.original_model) == ("qwen2.5:14b", QWEN)
    assert trace.details["substitution"] == {"reason": "context_upgrade", "requested": QWEN,
                                             "served": "qwen2.5:14b"}

    # once the asked-for model is hot somewhere, it is what answers
    await load(solo, QWEN, 4096)
    await wait_for(lambda: QWEN in loaded_on(router, "solo"))
    status, headers, payload = await post(router.url, "/api/chat", chat(
        QWEN, options={"num_ctx": 16384, "num_predict": 4}))
    assert status == 200 and payload["model"] == QWEN
    assert "X-Fleet-Context-Upgrade" not in headers
