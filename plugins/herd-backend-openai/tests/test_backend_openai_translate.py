"""Ollama <-> OpenAI translation, no server: each request mapping, whole answers, streams fed in
any slices or cut short, and hostile engine JSON."""

import json
import re

import pytest
from herd_backend_openai import translate
from herd_backend_openai.translate import SseToNdjson, TranslationError, from_openai, to_openai

PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJ"
       "RU5ErkJggg==")
JPEG = "/9j/4AAQSkZJRgABAQ"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
RFC3339_NS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")


class Clock:
    """A monotonic clock the test moves by hand, so durations are exact."""

    def __init__(self, now: int = 1_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def strict(line: bytes | str):
    """JSON as a strict client reads it: NaN / Infinity are not JSON."""
    def refuse(name):
        raise AssertionError(f"non-JSON constant {name} in output")
    return json.loads(line, parse_constant=refuse)


def lines(ndjson: bytes) -> list[dict]:
    assert ndjson == b"" or ndjson.endswith(b"\n")
    assert b"\n\n" not in ndjson  # never a blank line: ollama-python fails on one
    return [strict(line) for line in ndjson.splitlines()]


def without_created_at(body: dict) -> dict:
    assert RFC3339_NS.match(body.pop("created_at"))
    return body


# --- requests ---------------------------------------------------------------------------------


def test_chat_maps_messages_images_tools_format_and_options():
    body = {
        "model": "smollm2:latest", "stream": True, "keep_alive": "5m", "think": False,
        "format": "json", "tools": TOOLS,
        "options": {"temperature": 0.2, "top_p": 0.9, "top_k": 20, "seed": 7, "stop": ["\n"],
                    "num_predict": 16, "presence_penalty": 0.1, "frequency_penalty": 0.3,
                    "repeat_penalty": 1.1, "num_ctx": 4096},
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "what are these?", "images": [PNG, JPEG]},
            {"role": "assistant", "content": "", "thinking": "hmm",
             "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}]},
            {"role": "tool", "tool_name": "get_weather", "content": "11 degrees"},
        ],
    }
    path, out, dropped = to_openai("/api/chat", body, "smollm2")
    assert path == "/v1/chat/completions"
    call_id = out["messages"][2]["tool_calls"][0]["id"]
    assert out == {
        "model": "smollm2",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [
                {"type": "text", "text": "what are these?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG}"}}]},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": call_id, "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Tokyo"}'}}]},
            # Ollama names the tool; OpenAI needs the id of the call it answers
            {"role": "tool", "content": "11 degrees", "tool_call_id": call_id,
             "name": "get_weather"},
        ],
        "tools": TOOLS,
        "response_format": {"type": "json_object"},
        "temperature": 0.2, "top_p": 0.9, "top_k": 20, "seed": 7, "stop": ["\n"],
        "max_tokens": 16, "presence_penalty": 0.1, "frequency_penalty": 0.3,
        "repeat_penalty": 1.1,
        "stream": True, "stream_options": {"include_usage": True},
    }
    assert sorted(dropped) == ["keep_alive", "messages.thinking", "options.num_ctx", "think"]


def test_chat_tool_results_answer_their_own_calls():
    messages = [
        {"role": "user", "content": "weather in Tokyo and Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "a1", "function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}},
            {"id": "b2", "function": {"name": "get_time", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_name": "get_time", "content": "noon"},
        {"role": "tool", "tool_call_id": "a1", "content": "11 degrees"},
    ]
    _, out, _ = to_openai("/api/chat", {"model": "m", "messages": messages}, "m")
    assert out["messages"][1]["tool_calls"][1]["function"]["arguments"] == '{"city": "Paris"}'
    assert out["messages"][2]["tool_call_id"] == "b2"  # by name
    assert out["messages"][3]["tool_call_id"] == "a1"  # as given


def test_schema_format_not_streamed_and_no_limit():
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}}
    _, out, dropped = to_openai("/api/chat", {
        "model": "m", "stream": False, "format": schema, "options": {"num_predict": -1},
        "messages": [{"role": "user", "content": "age?"}]}, "engine-id")
    assert out["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "response", "schema": schema}}
    assert out["stream"] is False and "stream_options" not in out
    llama = to_openai("/api/generate", {"model": "m", "format": schema}, "m", engine="llama.cpp")
    assert llama[1]["response_format"] == {"type": "json_object", "schema": schema}
    assert "max_tokens" not in out and dropped == []  # -1 is Ollama's "no limit": nothing to say
    # numbers arrive as floats and integer options are truncated, as Ollama does; one stop string
    _, out, dropped = to_openai("/api/chat", {
        "model": "m", "messages": [], "keep_alive": None,
        "options": {"seed": 7.9, "top_k": 40.0, "stop": "END", "mirostat": 1}}, "m")
    assert (out["seed"], out["top_k"], out["stop"]) == (7, 40, ["END"])
    assert dropped == ["options.mirostat"]  # a null field is not worth announcing


def test_generate_uses_chat_with_system_and_images_unless_raw_or_suffix():
    path, out, dropped = to_openai("/api/generate", {
        "model": "m", "prompt": "why?", "system": "be brief", "images": [PNG], "context": [1, 2],
        "options": {"num_predict": 8}}, "m")
    assert path == "/v1/chat/completions"
    assert out["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [
            {"type": "text", "text": "why?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}]
    assert out["max_tokens"] == 8 and out["stream"] is True and dropped == ["context"]

    path, out, dropped = to_openai("/api/generate", {
        "model": "m", "prompt": "<|im_start|>user", "raw": True, "system": "x", "stream": False},
        "m")
    assert (path, out) == ("/v1/completions",
                           {"model": "m", "prompt": "<|im_start|>user", "stream": False})
    assert dropped == ["system"]

    path, out, _ = to_openai("/api/generate",
                             {"model": "m", "prompt": "def f(", "suffix": "return x"}, "m")
    assert path == "/v1/completions" and out["suffix"] == "return x" and out["prompt"] == "def f("


def test_embed_and_embeddings():
    assert to_openai("/api/embed", {"model": "e", "input": ["a", "b"], "truncate": True,
                                    "dimensions": 64}, "e-id") == (
        "/v1/embeddings", {"model": "e-id", "input": ["a", "b"], "dimensions": 64},
        ["truncate"])
    assert to_openai("/api/embed", {"model": "e", "input": "a"}, "e")[1]["input"] == "a"
    assert to_openai("/api/embeddings", {"model": "e", "prompt": "hi"}, "e")[:2] == (
        "/v1/embeddings", {"model": "e", "input": "hi"})


@pytest.mark.parametrize(("path", "body", "message"), [
    ("/api/embed", {"model": "e", "input": [1, 2]}, "invalid input type"),
    ("/api/embed", {"model": "e", "input": {"a": 1}}, "invalid input type"),
    ("/api/chat", {"model": "m", "messages": "hi"}, "messages must be a list"),
    ("/api/chat", {"model": "m", "messages": [{"content": "hi"}]}, "role is required"),
    ("/api/chat", {"model": "m", "messages": [{"role": "user", "content": ["x"]}]},
     "content must be a string"),
    ("/api/chat", {"model": "m", "messages": [{"role": "user", "content": "x", "images": [1]}]},
     "images must be a list of strings"),
    ("/api/chat", {"model": "m", "messages": [], "options": [1]}, "options must be an object"),
    ("/api/generate", {"model": "m", "prompt": 5}, "prompt must be a string"),
    ("/api/generate", {"model": "m", "options": {"temperature": "hot"}},
     'option "temperature" must be of type float'),
    ("/api/generate", {"model": "m", "options": {"seed": True}},
     'option "seed" must be of type integer'),
    ("/api/chat", {"model": "m", "messages": [], "options": {"stop": [1]}},
     'option "stop" must be of type array'),
    ("/api/pull", {"model": "m"}, "no OpenAI-compatible route"),
    ("/api/chat", ["not", "an", "object"], "must be a JSON object"),
])
def test_bad_client_bodies_raise_a_translation_error_with_the_400_text(path, body, message):
    with pytest.raises(TranslationError, match=message):
        to_openai(path, body, "m")


# --- whole answers ----------------------------------------------------------------------------

CHAT_ANSWER = {  # llama-server 0.6.0-dev shape, trimmed
    "choices": [{"finish_reason": "stop", "index": 0, "message": {
        "role": "assistant", "content": "Paris.", "reasoning_content": "France's capital"}}],
    "created": 1763805600, "model": "smollm2", "object": "chat.completion",
    "id": "chatcmpl-x", "usage": {"completion_tokens": 3, "prompt_tokens": 12, "total_tokens": 15},
    "timings": {"prompt_n": 12, "prompt_ms": 25.5, "predicted_n": 3, "predicted_ms": 30.25},
}


def test_whole_chat_answer_with_timings_is_ollamas_body():
    body = from_openai("/api/chat", CHAT_ANSWER, "smollm2:latest", 0, now_ns=100_000_000)
    assert without_created_at(body) == {
        "model": "smollm2:latest",
        "message": {"role": "assistant", "content": "Paris.", "thinking": "France's capital"},
        "done": True, "done_reason": "stop",
        "total_duration": 100_000_000, "prompt_eval_count": 12,
        "prompt_eval_duration": 25_500_000, "eval_count": 3, "eval_duration": 30_250_000,
    }


def test_whole_answer_without_timings_counts_wall_time_and_tool_calls_become_objects():
    answer = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Tokyo\"}"}}]}}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 9}}
    body = from_openai("/api/chat", answer, "m", 5, now_ns=2_000_000_005)
    assert without_created_at(body) == {
        "model": "m",
        "message": {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "function": {"index": 0, "name": "get_weather",
                                          "arguments": {"city": "Tokyo"}}}]},
        "done": True, "done_reason": "stop",
        "total_duration": 2_000_000_000, "prompt_eval_count": 20,
        "eval_count": 9, "eval_duration": 2_000_000_000,
    }


def test_whole_generate_from_chat_and_from_completions():
    answer = {"choices": [{"index": 0, "finish_reason": "length",
                           "message": {"role": "assistant", "content": "The sky"}}],
              "usage": {"prompt_tokens": 4, "completion_tokens": 2}}
    body = without_created_at(from_openai("/api/generate", answer, "m", 0, now_ns=10))
    assert body == {"model": "m", "response": "The sky", "done": True, "done_reason": "length",
                    "total_duration": 10, "prompt_eval_count": 4, "eval_count": 2,
                    "eval_duration": 10}
    completion = {"object": "text_completion",
                  "choices": [{"text": " is blue", "index": 0, "finish_reason": "stop"}]}
    body = from_openai("/api/generate", completion, "m", 0, now_ns=10)
    assert body["response"] == " is blue" and body["done_reason"] == "stop"
    assert "context" not in body


def test_whole_embeddings():
    answer = {"object": "list", "model": "e", "usage": {"prompt_tokens": 8, "total_tokens": 8},
              "data": [{"object": "embedding", "index": 1, "embedding": [0.0, 2.0]},
                       {"object": "embedding", "index": 0, "embedding": [3.0, 4.0]}]}
    body = from_openai("/api/embed", answer, "e:latest", 0, now_ns=7)
    assert body == {"model": "e:latest", "embeddings": [[0.6, 0.8], [0.0, 1.0]],
                    "total_duration": 7, "prompt_eval_count": 8}
    assert from_openai("/api/embeddings", answer, "e", 0) == {"embedding": [3.0, 4.0]}


def test_whole_error_and_non_answers():
    assert from_openai("/api/chat", {"error": {"message": "Loading model", "code": 503}}, "m",
                       0) == {"error": "Loading model"}
    assert from_openai("/api/chat", {"error": "boom"}, "m", 0) == {"error": "boom"}
    # llama-cpp-python 0.3.36's answer to a body it refuses (recorded): no traceback passes on
    refused = {"error": {"message": "1 validation error:\n  {'type': 'literal_error', 'loc': "
                         "('body', 'response_format', 'type')}\n\n  File \"/venv/lib/python3.11"
                         "/site-packages/llama_cpp/server/app.py\", line 376, in create_chat_"
                         "completion\n    POST /v1/chat/completions",
                         "type": "internal_server_error", "param": None, "code": None}}
    error = from_openai("/api/chat", refused, "m", 0)["error"]
    assert error.startswith("1 validation error") and "File" not in error and "app.py" not in error
    assert len(from_openai("/api/chat", {"error": "x" * 10**6}, "m", 0)["error"]) == 2000
    assert "error" in from_openai("/api/chat", [1, 2], "m", 0)
    stream = SseToNdjson("/api/chat", "m", 0)
    assert strict(stream.whole(b"<html>502</html>"))["error"]
    assert strict(stream.whole(json.dumps(CHAT_ANSWER).encode()))["message"]["content"] == "Paris."


# --- streams ----------------------------------------------------------------------------------


def sse(*events) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n"
                    for e in events)


def chunk(delta=None, finish=None, **extra):
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "s",
            "choices": [{"index": 0, "delta": delta if delta is not None else {},
                         "finish_reason": finish}], **extra}


# llama-server with stream_options.include_usage: a role chunk, content, a finish chunk with
# timings, a usage chunk with no choices, [DONE]
LLAMA_SERVER = sse(
    chunk({"role": "assistant", "content": None}),
    chunk({"content": "The"}),
    chunk({"content": " capital"}),
    chunk({"content": " is Paris."}),
    chunk({}, "stop", timings={"prompt_n": 12, "prompt_ms": 20.0, "predicted_n": 3,
                               "predicted_ms": 45.5}),
    {"id": "chatcmpl-1", "choices": [], "usage": {"completion_tokens": 3, "prompt_tokens": 12,
                                                  "total_tokens": 15}},
    b"[DONE]",
)


def run(stream_bytes: bytes, path="/api/chat", pieces=None, clock=None) -> list[dict]:
    clock = clock or Clock(0)
    stream = SseToNdjson(path, "smollm2:latest", 0, clock=clock)
    out = b""
    for piece in pieces or [stream_bytes]:
        clock.now += 1000
        out += stream.frame(piece)
    clock.now += 1000
    out += stream.end()
    return lines(out)


def test_llama_server_stream_becomes_ollama_ndjson():
    got = run(LLAMA_SERVER)
    for line in got:
        without_created_at(line)
    assert got == [
        {"model": "smollm2:latest", "message": {"role": "assistant", "content": "The"},
         "done": False},
        {"model": "smollm2:latest", "message": {"role": "assistant", "content": " capital"},
         "done": False},
        {"model": "smollm2:latest", "message": {"role": "assistant", "content": " is Paris."},
         "done": False},
        {"model": "smollm2:latest", "message": {"role": "assistant", "content": ""},
         "done": True, "done_reason": "stop", "total_duration": 65_500_000,
         "prompt_eval_count": 12, "prompt_eval_duration": 20_000_000, "eval_count": 3,
         "eval_duration": 45_500_000},
    ]


def test_stream_split_anywhere_gives_the_same_lines():
    def comparable(result):
        return [without_created_at(line) for line in result]

    whole = comparable(run(LLAMA_SERVER))
    for cut in range(1, len(LLAMA_SERVER)):
        pieces = [LLAMA_SERVER[:cut], LLAMA_SERVER[cut:]]
        assert comparable(run(LLAMA_SERVER, pieces=pieces)) == whole, cut
    bytewise = [LLAMA_SERVER[i:i + 1] for i in range(len(LLAMA_SERVER))]
    assert comparable(run(LLAMA_SERVER, pieces=bytewise)) == whole


def test_crlf_stream_without_usage_counts_deltas_and_measures_time():
    # llama-cpp-python (sse-starlette): CRLF line ends, no usage chunk, no timings
    body = sse(chunk({"role": "assistant"}), chunk({"content": "Hi"}), chunk({"content": "!"}),
               chunk({}, "length"), b"[DONE]").replace(b"\n", b"\r\n")
    clock = Clock(0)
    stream = SseToNdjson("/api/generate", "m", 0, clock=clock)
    out = b""
    for index, event in enumerate(body.split(b"\r\n\r\n")[:-1]):
        clock.now = (index + 1) * 1_000_000  # first token at 2 ms
        out += stream.frame(event + b"\r\n\r\n")
    clock.now = 10_000_000
    got = lines(out + stream.end())
    assert [line["response"] for line in got] == ["Hi", "!", ""]
    final = got[-1]
    assert final["done"] is True and final["done_reason"] == "length"
    assert (final["eval_count"], final["total_duration"], final["prompt_eval_duration"],
            final["eval_duration"]) == (2, 10_000_000, 2_000_000, 8_000_000)
    assert "prompt_eval_count" not in final  # unknown: left out, as Ollama leaves out zeros


def test_tool_call_fragments_are_sent_whole_before_the_final_line():
    body = sse(
        chunk({"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_7", "type": "function",
             "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": " \"Tokyo\"}"}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_8",
                               "function": {"name": "get_time", "arguments": "{}"}}]}),
        chunk({}, "tool_calls"),
        b"[DONE]",
    )
    got = run(body)
    assert len(got) == 2
    assert got[0]["done"] is False and got[0]["message"]["tool_calls"] == [
        {"id": "call_7", "function": {"index": 0, "name": "get_weather",
                                      "arguments": {"city": "Tokyo"}}},
        {"id": "call_8", "function": {"index": 1, "name": "get_time", "arguments": {}}}]
    assert got[1]["done"] is True and got[1]["done_reason"] == "stop"


def test_reasoning_deltas_become_thinking():
    body = sse(chunk({"reasoning_content": "Let me see"}), chunk({"content": "4"}),
               chunk({}, "stop"), b"[DONE]")
    got = run(body)
    assert got[0]["message"] == {"role": "assistant", "content": "", "thinking": "Let me see"}
    assert got[1]["message"] == {"role": "assistant", "content": "4"}
    assert got[2]["eval_count"] == 2


def test_completions_stream_for_raw_generate():
    body = sse({"choices": [{"text": "def", "index": 0, "finish_reason": None}]},
               {"choices": [{"text": " f", "index": 0, "finish_reason": "stop"}]}, b"[DONE]")
    got = run(body, path="/api/generate")
    assert [line["response"] for line in got] == ["def", " f", ""]


def test_engine_error_event_becomes_an_ollama_error_line_and_ends_the_stream():
    body = sse(chunk({"content": "Hi"}),
               {"error": {"code": 500, "message": "context shift disabled",
                          "type": "server_error"}},
               chunk({"content": "never"}))
    got = run(body)
    assert got[-1] == {"error": "context shift disabled"} and len(got) == 2
    # llama.cpp's server writes failures as an "error:" field, not data
    stream = SseToNdjson("/api/chat", "m", 0)
    out = stream.frame(b'error: {"code":400,"message":"bad grammar",'
                       b'"type":"invalid_request_error"}\n\n')
    assert lines(out + stream.end()) == [{"error": "bad grammar"}]


def test_a_stream_cut_anywhere_ends_with_done_or_an_error_never_an_exception():
    tool_stream = sse(chunk({"tool_calls": [{"index": 0, "id": "c", "function": {
        "name": "f", "arguments": "{\"a\":"}}]}), chunk({"tool_calls": [
            {"index": 0, "function": {"arguments": "1}"}}]}), chunk({}, "tool_calls"))
    for body in (LLAMA_SERVER, tool_stream):
        for cut in range(len(body)):
            got = run(body[:cut])
            last = got[-1]
            assert last.get("done") is True or set(last) == {"error"}, (cut, last)
            # an event counts once its JSON is whole, even without its blank line (the last
            # frame a dying node sent is relayed without one)
            finished = any(b'"finish_reason": "' in event and translate.loads(event[6:])
                           for event in body[:cut].split(b"\n\n"))
            assert (last.get("done") is True) == finished, cut


HOSTILE = [
    b"data: 5\n\n", b"data: []\n\n", b"data: null\n\n", b'data: "x"\n\n', b"data: {\n\n",
    b"data: NaN\n\n", b'data: {"choices": "x"}\n\n', b'data: {"choices": [null, 5]}\n\n',
    b'data: {"choices": [{"delta": "x"}]}\n\n',
    b'data: {"choices": [{"delta": {"content": 5, "reasoning_content": []}}]}\n\n',
    (b'data: {"choices": [{"delta": {"tool_calls": [null, 5, {"index": -1}, {"function": 3}]}}]}'
    b"\n\n"),
    (b'data: {"choices": [{"delta": {"tool_calls": [{"index": 100000000000000000000000,'
    b' "function": {"name": 7, "arguments": {"x": 1e999}}}]}}]}\n\n'),
    b'data: {"usage": {"prompt_tokens": 1e999, "completion_tokens": NaN}, "choices": []}\n\n',
    b'data: {"usage": {"prompt_tokens": -5, "completion_tokens": 1' + b"0" * 5000 + b"}}\n\n",
    b'data: {"timings": {"prompt_ms": Infinity, "predicted_ms": -1, "prompt_n": "x"}}\n\n',
    b"data: " + b"[" * 100_000 + b"\n\n",
    b"\xff\xfe data: \x00\n\n", b": comment only\n\n", b"event: ping\n\n", b"data:\n\n",
    b'data: {"error": null, "choices": [{"delta": {"content": "ok"}, "finish_reason": 9}]}\n\n',
]


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_hostile_frames_are_skipped_and_never_raise(path):
    stream = SseToNdjson(path, "m", 0)
    out = b"".join(stream.frame(frame) for frame in HOSTILE)
    out += stream.frame(sse(chunk({"content": "fine"}, "stop"))) + stream.end()
    got = lines(out)
    assert got[-1]["done"] is True
    text = "".join(line.get("message", {}).get("content", "") if path == "/api/chat"
                   else line.get("response", "") for line in got)
    assert text == "okfine"  # the two well-formed deltas, nothing else
    assert all(isinstance(v, int) and v >= 0 for k, v in got[-1].items() if k.endswith(
        ("_count", "_duration")))


@pytest.mark.parametrize("answer", [
    None, 5, "x", [], {}, {"choices": None}, {"choices": [None]}, {"choices": [{"message": 5}]},
    {"choices": [{"message": {"content": 7, "tool_calls": [{"function": {"name": "f",
                                                                       "arguments": "{oops"}}]}}]},
    {"choices": [{"message": {"tool_calls": "x"}}], "usage": {"prompt_tokens": 2**80}},
    {"choices": [], "timings": {"prompt_ms": float("nan"), "predicted_ms": 1e308}},
    {"data": [{"embedding": [float("inf"), 1.0]}, {"embedding": ["a"]},
              {"embedding": [1e308, 1e308]}, None, {"embedding": [True]}], "usage": 5},
    {"data": "x"},
])
@pytest.mark.parametrize("path", list(translate.ROUTES))
def test_hostile_whole_answers_never_raise_and_stay_json(answer, path):
    body = from_openai(path, answer, "m", 0, now_ns=10)
    json.dumps(body, allow_nan=False)  # raises on any NaN or infinity that got through
    if path == "/api/chat" and isinstance(answer, dict) and not answer.get("error"):
        assert body["message"]["role"] == "assistant" and isinstance(
            body["message"]["content"], str)
    if path == "/api/embed" and isinstance(answer, dict):
        assert all(all(abs(x) <= 1 for x in v) for v in body["embeddings"])


def test_loads_reads_non_finite_and_absurd_numbers_as_null():
    assert translate.loads(b'{"a": NaN, "b": 1e999, "c": -Infinity}') == {
        "a": None, "b": None, "c": None}
    assert translate.loads(b"1" * 5000) is None
    assert translate.loads(b"[" * 100_000) is None
    assert translate.loads(b"\xff") is None
