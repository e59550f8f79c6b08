"""Deterministic model output: what a simulated model "says", thinks, calls and embeds.

Everything is a pure function of the request (prompt, seed, options), never of time or of the
node, so the same request gives the same answer on every node and in every run. That is what
lets tests assert on content and lets a router's retries be compared byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import struct
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import attrs

__all__ = ["Plan", "embed", "plan_reply", "token_count", "tool_call_id"]



def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# written as text to keep the word lists readable
_WORDS = _words(
    "the sky light sun air blue red green water wave small large many few time day night model "
    "answer question simple clear short long idea point reason because when where which while "
    "system memory machine network request token word river mountain city village road house "
    "garden tree leaf stone cloud rain wind storm quiet bright dark warm cold early late first "
    "last next every other same different good better best important useful careful quick slow "
    "often always never sometimes together apart inside outside above below between through "
    "across around near far open close start finish build make take give find keep show tell "
    "learn teach read write speak listen think know see hear feel help move turn run walk"
)

_THINKING_OPENERS = ("Okay,", "Hmm,", "Alright,", "Let", "So,")
_THINKING_WORDS = _words(
    "the user asks about this so I should consider what they mean first then check the "
    "details and give a clear answer maybe mention why it works and keep it short wait let me "
    "verify that step again yes that seems right"
)


def _rng(*parts: Any) -> random.Random:
    material = json.dumps(parts, sort_keys=True, ensure_ascii=True, default=str).encode()
    return random.Random(int.from_bytes(hashlib.sha256(material).digest()[:8], "big"))


def token_count(text: str) -> int:
    """Prompt tokens, approximated as Ollama-ish ~4 characters per token (at least 1)."""
    return max(1, math.ceil(len(text) / 4))


def tool_call_id(*parts: Any) -> str:
    """``call_`` + 8 lower-case alphanumerics, like Ollama's generated tool call ids."""
    rng = _rng("call", *parts)
    return "call_" + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8))


def _sentence_tokens(rng: random.Random, count: int) -> list[str]:
    tokens: list[str] = []
    sentence_left = 0
    for index in range(count):
        word = rng.choice(_WORDS)
        if sentence_left == 0:
            word = word.capitalize()
            sentence_left = rng.randint(6, 14)
        sentence_left -= 1
        last = index == count - 1
        if sentence_left == 0 or last:
            word += "."
        elif rng.random() < 0.06:
            word += ","
        tokens.append(word if index == 0 else " " + word)
    return tokens


def _thinking_tokens(rng: random.Random, count: int) -> list[str]:
    tokens = [rng.choice(_THINKING_OPENERS)]
    while len(tokens) < count:
        tokens.append(" " + rng.choice(_THINKING_WORDS))
    tokens[-1] += "."
    return tokens


def _chop(text: str, size: int = 4) -> list[str]:
    """Split structured output (JSON) into token-sized pieces."""
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


# --- structured values (format schemas and tool arguments) ---------------------------------------

_PLACE_RE = re.compile(r"\b(?:in|at|for|near)\s+([A-Z][\w\-]*(?:\s+[A-Z][\w\-]*)*)")


def _place(text: str) -> str:
    match = _PLACE_RE.search(text)
    return match.group(1) if match else "Paris"


def _value_for(name: str, schema: Any, rng: random.Random, context: str) -> Any:
    if not isinstance(schema, dict):
        return rng.choice(_WORDS)
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "integer":
        return rng.randint(1, 100)
    if kind == "number":
        return round(rng.uniform(1, 100), 1)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "array":
        return [_value_for(name, schema.get("items", {"type": "string"}), rng, context)
                for _ in range(2)]
    if kind == "object" or "properties" in schema:
        return _object_for(schema, rng, context, all_properties=True)
    if name.lower() in ("city", "location", "place", "town", "country", "region"):
        return _place(context)
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))


def _object_for(schema: dict[str, Any], rng: random.Random, context: str, *,
                all_properties: bool) -> dict[str, Any]:
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return {}
    required = schema.get("required")
    names = list(properties)
    if not all_properties and isinstance(required, list) and required:
        names = [n for n in names if n in required]
    return {n: _value_for(n, properties[n], rng, context) for n in names}


def structured_output(fmt: Any, rng: random.Random, context: str) -> str:
    """Text for ``format``: ``"json"`` gives a small object, a schema gives a conforming value."""
    if isinstance(fmt, dict):
        value = _value_for("", fmt, rng, context)
    else:
        value = {"answer": " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 8)))}
    return json.dumps(value, ensure_ascii=False)


def pick_tool_call(tools: Sequence[Any], last_user: str, rng: random.Random) -> dict[str, Any] | None:
    """The deterministic trigger for tool calls: the last message is the user's and it says
    "weather" or names one of the tools. Returns ``{"name": ..., "arguments": {...}}``."""
    candidates = [t.get("function") for t in tools if isinstance(t, dict)]
    functions: list[dict[str, Any]] = [
        f for f in candidates if isinstance(f, dict) and isinstance(f.get("name"), str)]
    if not functions:
        return None
    lowered = last_user.lower()
    chosen = next((f for f in functions if f["name"].lower() in lowered), None)
    if chosen is None and "weather" in lowered:
        chosen = next((f for f in functions if "weather" in f["name"].lower()), functions[0])
    if chosen is None:
        return None
    params = chosen.get("parameters")
    arguments = _object_for(params, rng, last_user, all_properties=False) \
        if isinstance(params, dict) else {}
    # Go marshals a map with its keys sorted; arguments are a map in Ollama
    return {"name": chosen["name"], "arguments": dict(sorted(arguments.items()))}


# --- a whole reply -------------------------------------------------------------------------------


@attrs.frozen
class Plan:
    """What the model will emit for one request, token by token.

    ``steps`` are ``("thinking", text)``, ``("content", text)`` or ``("tool_call", call)`` in
    order. ``eval_count`` counts every generated token (thinking and tool calls included, as
    Ollama does), ``done_reason`` is ``stop`` or ``length``.
    """

    steps: tuple[tuple[str, Any], ...]
    eval_count: int
    done_reason: str

    @property
    def content(self) -> str:
        return "".join(v for k, v in self.steps if k == "content")

    @property
    def thinking(self) -> str:
        return "".join(v for k, v in self.steps if k == "thinking")

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        return [v for k, v in self.steps if k == "tool_call"]


def plan_reply(
    key: Any,
    *,
    seed: int | None = None,
    num_predict: int | None = None,
    think: str | None = None,
    fmt: Any = None,
    tools: Sequence[Any] = (),
    last_user: str = "",
    stop: Iterable[str] = (),
) -> Plan:
    """The reply to a prompt identified by ``key`` (anything JSON-able: the rendered messages).

    ``think`` is ``None`` (no thinking) or a level (``low``/``medium``/``high``/``max``);
    ``num_predict`` > 0 caps the tokens (``done_reason: "length"``); ``stop`` strings cut the
    content where they first appear (``done_reason: "stop"``).
    """
    rng = _rng("reply", key, seed)
    budget = num_predict if num_predict is not None and num_predict > 0 else None
    tokens: list[tuple[str, Any]] = []

    if think is not None:
        scale = {"low": 0.5, "high": 2.0, "max": 3.0}.get(think, 1.0)
        count = max(3, int(rng.randint(10, 30) * scale))
        tokens += [("thinking", t) for t in _thinking_tokens(rng, count)]

    call = pick_tool_call(tools, last_user, rng) if tools else None
    if call is not None:
        call = {**call, "id": tool_call_id(key, seed)}
        # a tool call costs tokens like the JSON it is made of
        cost = max(1, len(json.dumps(call["arguments"])) // 4 + 4)
        content_tokens: list[tuple[str, Any]] = [("tool_call", call)] + [("_cost", None)] * (cost - 1)
    elif fmt:
        content_tokens = [("content", t) for t in _chop(structured_output(fmt, rng, last_user))]
    else:
        content_tokens = [("content", t) for t in _sentence_tokens(rng, rng.randint(20, 60))]
    tokens += content_tokens

    done_reason = "stop"
    if budget is not None and len(tokens) > budget:
        tokens = tokens[:budget]
        done_reason = "length"
    tokens = _apply_stop(tokens, [s for s in stop if s])
    eval_count = len(tokens)
    steps = tuple((k, v) for k, v in tokens if k != "_cost")
    if call is not None and done_reason == "length":
        # the budget ran out inside the tool call's tokens: the call is never emitted
        steps = tuple((k, v) for k, v in steps if k != "tool_call")
    return Plan(steps=steps, eval_count=eval_count, done_reason=done_reason)


def _apply_stop(tokens: list[tuple[str, Any]], stops: list[str]) -> list[tuple[str, Any]]:
    if not stops:
        return tokens
    text = ""
    for index, (kind, value) in enumerate(tokens):
        if kind != "content":
            continue
        before = len(text)
        text += value
        hits = [text.find(s) for s in stops if s in text]
        if hits:
            cut = min(hits) - before
            kept = [(kind, value[:cut])] if cut > 0 else []
            return tokens[:index] + kept
    return tokens


def context_tokens(key: Any, count: int) -> list[int]:
    """Token ids for ``/api/generate``'s ``context`` (deterministic, vocabulary-sized)."""
    rng = _rng("context", key)
    return [rng.randrange(128_256) for _ in range(count)]


# --- embeddings ----------------------------------------------------------------------------------

_WORD_RE = re.compile(r"\w+", re.UNICODE)


@lru_cache(maxsize=4096)
def _word_vector(word: str, dims: int) -> tuple[float, ...]:
    rng = _rng("word", word, dims)
    return tuple(rng.gauss(0.0, 1.0) for _ in range(dims))


def _float32(value: float) -> float:
    # float32 precision with a short repr, like Go marshalling a float32
    rounded = struct.unpack("<f", struct.pack("<f", value))[0]
    return float(f"{rounded:.8g}")


def embed(text: str, dims: int, *, normalise: bool = True, truncate_to: int | None = None) -> list[float]:
    """A deterministic vector for ``text``: the sum of per-word vectors plus a little of the whole
    text, so texts sharing words are close (cosine) and different texts differ.

    ``normalise`` gives an L2 norm of 1 (``/api/embed``, ``/v1/embeddings``); otherwise the norm is
    text-dependent like the legacy ``/api/embeddings``. ``truncate_to`` keeps the first dims and
    re-normalises (the ``dimensions`` request field).
    """
    vector = [0.0] * dims
    for word in _WORD_RE.findall(text.lower())[:2048]:
        for i, x in enumerate(_word_vector(word, dims)):
            vector[i] += x
    whole = _rng("text", text)
    for i in range(dims):
        vector[i] += 0.25 * whole.gauss(0.0, 1.0)
    if truncate_to is not None and 0 < truncate_to < dims:
        vector = vector[:truncate_to]
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    if normalise:
        return [_float32(x / norm) for x in vector]
    magnitude = 5.0 + (len(text) % 17)
    return [x / norm * magnitude for x in vector]


def embedding_b64(vector: Sequence[float]) -> str:
    """OpenAI ``encoding_format: base64``: little-endian float32, standard base64."""
    import base64

    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
