"""The dialects as the kernel uses them: path lookup, error shapes, stream errors, token counts
from untrusted engine JSON, and the reading of an engine's error answers."""

import json

import herd_api_formats
import pytest

from herd_kernel import wire


@pytest.fixture(autouse=True)
def registered():
    herd_api_formats.register()


@pytest.mark.parametrize("path,api", [
    ("/api/chat", "ollama"), ("/", "ollama"), ("/v1/chat/completions", "openai"),
    ("/v1/models/x", "openai"), ("/v1/messages", "anthropic"), ("/fleet/status", "plain"),
])
def test_each_path_answers_in_its_apis_dialect(path, api):
    assert wire.api_for_path(path) == api


def test_error_shapes():
    assert wire.error_body("ollama", 404, "gone") == {"error": "gone"}
    assert wire.error_body("openai", 404, "gone") == {"error": {
        "message": "gone", "type": "not_found_error", "param": None, "code": None}}
    anthropic = wire.error_body("anthropic", 503, "busy")
    assert anthropic["type"] == "error" and anthropic["error"] == {
        "type": "overloaded_error", "message": "busy"}
    assert anthropic["request_id"].startswith("req_")


def test_stream_errors_end_a_stream_in_its_own_framing():
    assert json.loads(wire.stream_error("ollama", "x")) == {"error": "x"}
    sse = wire.stream_error("openai", "x")
    assert sse.startswith(b"data: ") and sse.endswith(b"\n\n")
    assert wire.stream_error("anthropic", "x").startswith(b"event: error\ndata: ")


@pytest.mark.parametrize("data,whole,expected", [
    (b'{"done":true,"prompt_eval_count":5,"eval_count":7}', True, (5, 7)),
    (b'{"usage":{"prompt_tokens":3,"completion_tokens":4}}', True, (3, 4)),
    (b'{"usage":{"input_tokens":2,"output_tokens":9}}', True, (2, 9)),
    (b'data: {"choices":[]}\n\ndata: {"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n'
     b'data: [DONE]\n\n', False, (1, 2)),
    (b'{"eval_count":"12","prompt_eval_count":true}', True, (None, None)),
    (b'{"eval_count":1e400}', True, (None, None)),
    (b"not json", True, (None, None)),
])
def test_counts_are_whole_numbers_or_none(data, whole, expected):
    assert herd_api_formats.counts(data, whole) == expected


@pytest.mark.parametrize("status,message,fault", [
    (404, "model 'x' not found", "gone"),
    (404, 'model "x" not found, try pulling it first', "gone"),
    (400, "invalid format", "client"),
    (500, 'option "num_ctx" must be of type integer', "client"),
    (500, "llama runner process has terminated", None),
    (429, "too many", None),
    (408, "slow", None),
    (503, "busy", None),
])
def test_an_engines_error_is_the_models_absence_the_clients_fault_or_the_nodes(
        status, message, fault):
    assert herd_api_formats.classify(status, message) == fault
