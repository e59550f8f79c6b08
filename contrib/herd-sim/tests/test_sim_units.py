"""Pure functions: the catalogue, Go wire formats, keep_alive parsing, deterministic text."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from herd_sim import CATALOGUE, PROFILES, ModelSpec, NodeProfile
from herd_sim.catalogue import canonical_name, full_name, is_valid_name, lookup
from herd_sim.text import embed, plan_reply
from herd_sim.wire import ApiError, go_json, go_time, parse_keep_alive, rfc3339_utc_now


def test_catalogue_entries_look_like_ollama_models():
    assert len(CATALOGUE) >= 10
    for name, spec in CATALOGUE.items():
        assert name == spec.name and ":" in name
        assert re.fullmatch(r"[0-9a-f]{64}", spec.digest)
        assert spec.context_length > 0 and spec.embedding_length > 0
    assert CATALOGUE["llama3.2:3b"].size_gb == pytest.approx(2.0, abs=0.05)
    assert CATALOGUE["llama3.3:70b"].size_gb == pytest.approx(42.5, abs=0.5)
    assert CATALOGUE["nomic-embed-text:latest"].embedding_length == 768
    assert CATALOGUE["all-minilm:latest"].embedding_length == 384
    assert {"thinking", "tools"} <= set(CATALOGUE["qwen3:8b"].capabilities)
    assert "vision" in CATALOGUE["gemma3:4b"].capabilities
    # the digest is a function of the name only
    again = ModelSpec(name="llama3.2:3b", size_bytes=1, context_length=1, family="llama",
                      parameter_size="1B", quantization_level="Q4_0", capabilities=("completion",))
    assert again.digest == CATALOGUE["llama3.2:3b"].digest


def test_profiles_are_consistent():
    assert list(PROFILES) == ["large", "medium", "small", "tiny"]
    assert [PROFILES[p].memory_gb for p in PROFILES] == [128, 32, 16, 8]
    for profile in PROFILES.values():
        assert set(profile.loaded) <= set(profile.models)
    with pytest.raises(ValueError, match="not in the catalogue"):
        NodeProfile(name="x", memory_gb=8, tokens_per_s=10, load_gbps=1, models=("nope:1b",))
    with pytest.raises(ValueError, match="do not fit"):
        NodeProfile(name="x", memory_gb=8, tokens_per_s=10, load_gbps=1,
                    models=("llama3.3:70b",), loaded=("llama3.3:70b",))


def test_model_names():
    assert canonical_name("Llama3.2") == "llama3.2:latest"
    assert canonical_name("registry.ollama.ai/library/qwen3:8B") == "qwen3:8b"
    assert full_name("gemma3:4b") == "registry.ollama.ai/library/gemma3:4b"
    assert full_name("me/model") == "registry.ollama.ai/me/model:latest"
    assert lookup("ALL-MINILM", CATALOGUE) == "all-minilm:latest"
    assert lookup("llama3.2", CATALOGUE) is None  # no :latest tag in the catalogue
    assert not is_valid_name("") and not is_valid_name("a b") and is_valid_name("hf.co/o/r:q4")


@pytest.mark.parametrize("value,seconds", [
    ("5m", 300.0), ("1h30m", 5400.0), ("300ms", 0.3), ("0", 0.0), (0, 0.0), (3600, 3600.0),
    (1.5, 1.5), ("-1m", None), (-1, None), (None, 42.0),
])
def test_keep_alive_values(value, seconds):
    assert parse_keep_alive(value, 42.0) == pytest.approx(seconds) if seconds is not None \
        else parse_keep_alive(value, 42.0) is None


@pytest.mark.parametrize("value,message", [
    ("5", 'time: missing unit in duration "5"'),
    ("abc", 'time: invalid duration "abc"'),
    ("3d", 'time: unknown unit "d" in duration "3d"'),
    (True, "Unsupported type: 'bool'"),
])
def test_keep_alive_errors(value, message):
    with pytest.raises(ApiError) as info:
        parse_keep_alive(value, None)
    assert info.value.status == 400 and info.value.message == message


def test_go_encodings():
    assert go_json({"t": "<|eot_id|> & é"}) == '{"t":"\\u003c|eot_id|\\u003e \\u0026 é"}'
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", rfc3339_utc_now())
    moment = datetime(2025, 5, 4, 17, 37, 44, 706010, tzinfo=timezone(timedelta(hours=-7)))
    assert go_time(moment) == "2025-05-04T17:37:44.70601-07:00"
    assert go_time(moment.replace(microsecond=0, tzinfo=UTC)) == "2025-05-04T17:37:44Z"


def test_replies_are_deterministic_and_capped():
    one = plan_reply({"p": "hi"})
    assert one == plan_reply({"p": "hi"}) and one.content != plan_reply({"p": "ho"}).content
    assert 20 <= one.eval_count <= 60 and one.done_reason == "stop"
    capped = plan_reply({"p": "hi"}, num_predict=5)
    assert capped.eval_count == 5 and capped.done_reason == "length"
    assert one.content.startswith(capped.content)
    thinking = plan_reply({"p": "hi"}, think="medium")
    assert thinking.steps[0][0] == "thinking" and thinking.content
    word = one.content.split()[3]
    stopped = plan_reply({"p": "hi"}, stop=[word])
    assert word not in stopped.content and one.content.startswith(stopped.content)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    import json
    assert isinstance(json.loads(plan_reply({"p": "x"}, fmt=schema).content)["n"], int)


def test_embeddings_relate_similar_texts():
    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True))

    sky = embed("the sky is blue", 384)
    similar = embed("the blue sky", 384)
    other = embed("compilers parse tokens", 384)
    assert cosine(sky, similar) > cosine(sky, other)
    assert len(embed("x", 768, truncate_to=10)) == 10
