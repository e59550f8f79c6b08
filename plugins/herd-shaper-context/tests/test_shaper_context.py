"""Context protection once the node is known: a smaller num_ctx is sent as the loaded one."""

import json

import pytest

from herd_kernel.models import RouteRequest
from herd_kernel.testing import (
    ShaperHarness,
    decision_for,
    load_shapers,
)


def loaded(name, ctx, family="llama", size=1):
    return {"name": name, "context_length": ctx, "size_bytes": size, "details": {"family": family}}


def decision(model="llama3.2:3b", node_loaded=(), available=(), key=None, kind="ollama"):
    return decision_for(model, loaded=node_loaded, available=available, key=key, kind=kind)


def route(api="ollama", model="llama3.2:3b", num_ctx=None, num_predict=None):
    return RouteRequest(model=model, api=api, path="/api/chat", stream=False, num_ctx=num_ctx,
                        num_predict=num_predict)


Harness = ShaperHarness


def shaper(mode="strip", events=None):
    return Harness(load_shapers("shaper-context", {"FLEET_CONTEXT_PROTECTION": mode},
                                events=events if events is not None else []))


def test_smaller_num_ctx_is_sent_as_the_loaded_one_to_avoid_a_reload():
    # deleting it would not do: without num_ctx Ollama reloads at its default context
    events = []
    body = {"model": "llama3.2:3b", "options": {"num_ctx": 2048, "temperature": 0}}
    d = decision(node_loaded=[loaded("llama3.2:3b", 8192)])
    out = shaper(events=events).outbound(route(num_ctx=2048), b"", body, d)
    assert json.loads(out.body)["options"] == {"num_ctx": 8192, "temperature": 0}
    assert out.headers["X-Fleet-Context-Protection"] == \
        "num_ctx=2048 raised to the loaded 8192 (no reload)"
    assert body["options"]["num_ctx"] == 2048  # the parsed request itself is not mutated
    assert events[0][0] == "context_num_ctx_would_reload"


@pytest.mark.parametrize("mode", ["warn", "passthrough"])
def test_warn_and_passthrough_keep_num_ctx(mode):
    events = []
    body = {"model": "llama3.2:3b", "options": {"num_ctx": 2048}}
    d = decision(node_loaded=[loaded("llama3.2:3b", 4096)])
    out = shaper(mode, events).outbound(route(num_ctx=2048), b"raw", body, d)
    assert out.body == b"raw"
    assert len(events) == (1 if mode == "warn" else 0)


def test_bigger_context_goes_through_and_never_moves_to_another_model():
    # once a node is chosen the model is never swapped, even for a larger loaded relative
    events = []
    body = {"model": "qwen2.5:7b", "options": {"num_ctx": 16384}}
    d = decision("qwen2.5:7b", node_loaded=[loaded("qwen2.5:7b", 4096, family="qwen2"),
                                            loaded("deepseek-r1:7b", 32768, family="qwen2"),
                                            loaded("qwen2.5:14b", 32768, family="qwen2", size=9)])
    out = shaper(events=events).outbound(route(model="qwen2.5:7b", num_ctx=16384), b"raw", body, d)
    assert out.body == b"raw" and not out.headers
    assert events == [("context_reload_needed", {"node_id": "n", "model": "qwen2.5:7b",
                                                 "requested": 16384, "loaded": 4096,
                                                 "action": "reload"})]


def test_raised_num_ctx_is_in_the_trace_details():
    body = {"model": "llama3.2:3b", "options": {"num_ctx": 2048}}
    d = decision(node_loaded=[loaded("llama3.2:3b", 4096)])
    out = shaper().outbound(route(num_ctx=2048), b"", body, d)
    assert out.summary() == {"context_protection":
                             "num_ctx=2048 raised to the loaded 4096 (no reload)"}
    assert out.observe is None  # nothing to parse in the stream for this


def test_bigger_context_without_a_sibling_pays_the_reload():
    events = []
    body = {"model": "llama3.2:3b", "options": {"num_ctx": 16384}}
    d = decision(node_loaded=[loaded("llama3.2:3b", 4096), loaded("qwen2.5:7b", 32768, family="qwen2")])
    out = shaper(events=events).outbound(route(num_ctx=16384), b"raw", body, d)
    assert out.body == b"raw" and events[0][0] == "context_reload_needed"


def test_model_not_loaded_is_left_alone():
    body = {"model": "llama3.2:3b", "options": {"num_ctx": 2048}}
    out = shaper().outbound(route(num_ctx=2048), b"raw", body, decision(available=["llama3.2:3b"]))
    assert out.body == b"raw"


def test_bad_protection_mode_is_refused():
    with pytest.raises(ValueError, match="FLEET_CONTEXT_PROTECTION"):
        shaper("sometimes")


def test_options_num_ctx_is_left_alone_for_other_engines():
    # num_ctx is Ollama's own: an OpenAI-compatible engine is not reloaded by it
    body = {"model": "llama3.2:3b", "options": {"num_ctx": 2048}}
    d = decision(node_loaded=[loaded("llama3.2:3b", 8192)], kind="openai")
    out = shaper().outbound(route(num_ctx=2048), b"raw", body, d)
    assert out.body == b"raw" and not out.headers


def test_the_mode_is_read_per_request_so_a_runtime_change_applies_at_once():
    events = []
    harness = shaper("passthrough", events)
    body = {"model": "llama3.2:3b", "options": {"num_ctx": 2048}}
    d = decision(node_loaded=[loaded("llama3.2:3b", 8192)])
    assert harness.outbound(route(num_ctx=2048), b"raw", body, d).body == b"raw" and not events
    config = harness.shapers.ctx.config
    config.set_runtime("FLEET_CONTEXT_PROTECTION", "strip")
    out = harness.outbound(route(num_ctx=2048), b"raw", body, d)
    assert json.loads(out.body)["options"] == {"num_ctx": 8192}
    config.set_runtime("FLEET_CONTEXT_PROTECTION", None)  # back to the configured passthrough
    assert harness.outbound(route(num_ctx=2048), b"raw", body, d).body == b"raw"


def test_the_mode_is_read_case_insensitively_as_one_of_its_choices():
    assert shaper("WARN").shapers.ctx.config["FLEET_CONTEXT_PROTECTION"] == "warn"
