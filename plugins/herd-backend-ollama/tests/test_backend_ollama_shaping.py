"""Request shaping once the node is known: router-only fields, context protection, thinking."""

import json

import pytest
from herd_backend_ollama.shaping import Shaper, is_thinking

from herd_kernel.fleet import Fleet
from herd_kernel.models import Heartbeat, RouteRequest, structure
from herd_kernel.scoring import Decision
from herd_kernel.testing import heartbeat_payload


def loaded(name, ctx, family="llama", size=1):
    return {"name": name, "context_length": ctx, "size_bytes": size, "details": {"family": family}}


def decision(model="llama3.2:3b", node_loaded=(), available=(), key=None):
    fleet = Fleet()
    state = fleet.apply_heartbeat(structure(
        heartbeat_payload("n", loaded=list(node_loaded), available=list(available)), Heartbeat))
    return Decision(node=state, model=model, model_key=key or model, score=0, breakdown={})


def route(api="ollama", model="llama3.2:3b", num_ctx=None, num_predict=None):
    return RouteRequest(model=model, api=api, path="/api/chat", stream=False, num_ctx=num_ctx,
                        num_predict=num_predict)


def shaper(mode="strip", events=None):
    config = {"FLEET_CONTEXT_PROTECTION": mode, "FLEET_THINKING_OVERHEAD": 4.0,
              "FLEET_THINKING_MIN_PREDICT": 1024}
    return Shaper(config, lambda kind, **f: (events if events is not None else []).append((kind, f)))


def test_untouched_requests_forward_the_clients_bytes():
    raw = b'{"model": "llama3.2:3b",   "messages": []}'
    out = shaper().outbound(route(), raw, json.loads(raw), decision())
    assert out.body is raw and not out.headers


def test_router_only_fields_are_stripped():
    body = {"model": "llama3.2:3b", "fallback_models": ["x"], "messages": []}
    out = shaper().outbound(route(), b"", body, decision())
    assert json.loads(out.body) == {"model": "llama3.2:3b", "messages": []}


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


def test_thinking_budget_is_inflated_with_a_floor_and_reported():
    d = decision("deepseek-r1:7b", available=["deepseek-r1:7b"])
    assert is_thinking(d)
    body = {"model": "deepseek-r1:7b", "options": {"num_predict": 100}}
    out = shaper().outbound(route(model="deepseek-r1:7b", num_predict=100), b"", body, d)
    assert json.loads(out.body)["options"]["num_predict"] == 1024
    body = {"model": "deepseek-r1:7b", "options": {"num_predict": 1000}}
    out = shaper().outbound(route(model="deepseek-r1:7b", num_predict=1000), b"", body, d)
    assert json.loads(out.body)["options"]["num_predict"] == 4000
    answer = {"message": {"role": "assistant", "thinking": "t" * 400, "content": "ok"},
              "eval_count": 150, "done_reason": "stop"}
    headers = out.on_complete(json.dumps(answer).encode())
    assert headers == {"X-Thinking-Tokens": "100", "X-Output-Tokens": "50",
                       "X-Budget-Used": "3.8%", "X-Done-Reason": "stop"}


def test_thinking_by_capability_and_openai_max_tokens():
    d = decision("custom:1", available=[{"name": "custom:1", "capabilities": ["completion", "thinking"]}])
    body = {"model": "custom:1", "max_tokens": 300}
    out = shaper().outbound(route("openai", "custom:1", num_predict=300), b"", body, d)
    assert json.loads(out.body)["max_tokens"] == 1200
    plain = decision("qwq-lookalike:1", available=[{"name": "qwq-lookalike:1", "capabilities": ["completion"]}])
    assert not is_thinking(plain)  # what the node reports beats the name


def test_qwen3_is_known_by_name_when_the_node_reports_no_capabilities():
    assert is_thinking(decision("qwen3:8b", available=["qwen3:8b"]))
    assert not is_thinking(decision("qwen3-coder:30b", available=["qwen3-coder:30b"]))


@pytest.mark.parametrize("api,extra", [
    ("ollama", {"think": False}),
    ("openai", {"reasoning_effort": "none"}),
    ("openai", {"reasoning": {"effort": "none"}}),
])
def test_no_thinking_budget_when_the_request_turns_thinking_off(api, extra):
    d = decision("deepseek-r1:7b", available=["deepseek-r1:7b"])
    body = {"model": "deepseek-r1:7b", "options": {"num_predict": 5}, "max_tokens": 5, **extra}
    out = shaper().outbound(route(api, "deepseek-r1:7b", num_predict=5), b"raw", body, d)
    assert out.body == b"raw" and "X-Thinking-Budget" not in out.headers


@pytest.mark.parametrize("think", [True, "low", "high", "max", None])
def test_thinking_budget_when_the_model_will_think(think):
    d = decision("deepseek-r1:7b", available=["deepseek-r1:7b"])
    body = {"model": "deepseek-r1:7b", "options": {"num_predict": 5}}
    if think is not None:
        body["think"] = think
    out = shaper().outbound(route(model="deepseek-r1:7b", num_predict=5), b"", body, d)
    assert out.headers["X-Thinking-Budget"] == "1024"


def test_gpt_oss_thinks_whatever_a_boolean_says():
    d = decision("gpt-oss:20b", available=["gpt-oss:20b"])
    body = {"model": "gpt-oss:20b", "think": False, "options": {"num_predict": 5}}
    out = shaper().outbound(route(model="gpt-oss:20b", num_predict=5), b"", body, d)
    assert out.headers["X-Thinking-Budget"] == "1024"


def test_bad_protection_mode_is_refused():
    with pytest.raises(ValueError, match="FLEET_CONTEXT_PROTECTION"):
        shaper("sometimes")
