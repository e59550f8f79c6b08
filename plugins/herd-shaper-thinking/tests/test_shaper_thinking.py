"""Thinking budgets: raised for a model that will think, and the answer's split reported."""

import json

import pytest
from herd_shaper_thinking import is_thinking

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


def shaper(events=None):
    return Harness(load_shapers("shaper-thinking", events=events))


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


def test_an_openai_body_gets_the_budget_on_an_openai_engine_too():
    d = decision("qwq:32b", available=["qwq:32b"], kind="openai")
    body = {"model": "qwq:32b", "max_completion_tokens": 100}
    out = shaper().outbound(route("openai", "qwq:32b", num_predict=100), b"", body, d)
    assert json.loads(out.body) == {"model": "qwq:32b", "max_completion_tokens": 1024}
    assert out.headers == {"X-Thinking-Budget": "1024"}
