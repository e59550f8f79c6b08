"""The inference path shared by the native and OpenAI routes: turning a chat or generate body
into a validated ``Job`` (with Ollama's checks in Ollama's order and its error texts), and running
a job on a model slot token by token at the node's simulated speed.

The OpenAI routes translate their body into the native one and come through here too, which is
how Ollama itself is built (``middleware/openai.go`` in front of the native handlers).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs

from herd_sim.catalogue import ModelSpec, full_name, is_valid_name
from herd_sim.faults import Fault
from herd_sim.text import Plan, plan_reply, token_count
from herd_sim.wire import ApiError, parse_keep_alive, parse_options

if TYPE_CHECKING:
    from herd_sim.node import SimNode

__all__ = ["Job", "LoadOnly", "prepare_chat", "prepare_generate", "run_job", "scheduler_options"]

# prompt processing is this many times faster than decoding (batched evaluation)
PROMPT_SPEEDUP = 12.0
# tokens an image costs in the prompt (a typical vision projector)
IMAGE_TOKENS = 256
THINK_LEVELS = ("low", "medium", "high", "max")


@attrs.frozen
class Job:
    """A validated inference request."""

    spec: ModelSpec
    name: str  # as the client sent it, echoed in every response
    key: Any  # what the reply is a function of
    prompt_tokens: int
    num_ctx: int
    keep_alive: float | None
    think: str | None
    options: dict[str, Any]
    fmt: Any = None
    tools: tuple[Any, ...] = ()
    last_user: str = ""
    slow_load: Fault | None = None
    raw: bool = False


@attrs.frozen
class LoadOnly:
    """An empty prompt: load the model (``done_reason: "load"``), or unload it when ``unload``."""

    spec: ModelSpec
    name: str
    num_ctx: int
    keep_alive: float | None
    unload: bool
    slow_load: Fault | None = None


# --- shared checks -------------------------------------------------------------------------------


def find_model(node: SimNode, name: str, *, embed_wording: bool = False) -> ModelSpec:
    """The on-disk model ``name`` designates, or the 404 Ollama gives for it."""
    spec = node.disk_model(name)
    if spec is None:
        if embed_wording:
            raise ApiError(404, f'model "{name}" not found, try pulling it first')
        raise ApiError(404, f"model '{name}' not found")
    return spec


def parse_think(value: Any) -> bool | str | None:
    """``think``: bool or a level; anything else is Ollama's 400."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value in THINK_LEVELS:
        return value
    if isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    shown = json.dumps(value) if not isinstance(value, str) else f'"{value}"'
    raise ApiError(400, f'invalid think value: {shown} (must be "high", "medium", "low", '
                        '"max", true, or false)')


def resolve_think(spec: ModelSpec, name: str, think: bool | str | None) -> str | None:
    """The thinking level to use: thinking models think unless told not to."""
    wants = think is True or isinstance(think, str)
    if "thinking" not in spec.capabilities:
        if wants:
            raise ApiError(400, f'"{name}" does not support thinking')
        return None
    if think is False:
        return None
    return think if isinstance(think, str) else "medium"


def check_format(fmt: Any) -> Any:
    if fmt in (None, ""):
        return None
    if fmt == "json" or isinstance(fmt, dict):
        return fmt
    raise ApiError(400, 'invalid format: expected "json" or a valid JSON schema')


def num_ctx_for(node: SimNode, spec: ModelSpec, options: dict[str, Any]) -> int:
    """The context a request runs with: ``num_ctx`` or the node default, capped at the model's
    training context (Ollama does the same and reloads when it differs from the loaded one)."""
    wanted = options.get("num_ctx") or node.profile.default_num_ctx
    return max(1, min(int(wanted), spec.context_length))


def scheduler_options(value: Any) -> dict[str, Any]:
    try:
        return parse_options(value)
    except ApiError as err:
        # Ollama applies options inside the scheduler, whose errors become 500s
        raise ApiError(500, err.message) from None


def _check_images(images: Any, where: str) -> list[str]:
    if images is None:
        return []
    if not isinstance(images, list):
        raise ApiError(400, f"json: cannot unmarshal {type(images).__name__} into Go struct field "
                            f"{where}.images of type []api.ImageData")
    out: list[str] = []
    for item in images:
        if not isinstance(item, str):
            raise ApiError(400, f"json: cannot unmarshal number into Go struct field "
                                f"{where}.images of type api.ImageData")
        try:
            base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "illegal base64 data at input byte 0") from None
        out.append(item)
    return out


def _messages(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ApiError(400, "json: cannot unmarshal object into Go struct field "
                            "ChatRequest.messages of type []api.Message")
    messages: list[dict[str, Any]] = []
    for raw in value:
        if not isinstance(raw, dict):
            raise ApiError(400, "json: cannot unmarshal string into Go struct field "
                                "ChatRequest.messages of type api.Message")
        content = raw.get("content") or ""
        if not isinstance(content, str):
            kind = "array" if isinstance(content, list) else "object"
            raise ApiError(400, f"json: cannot unmarshal {kind} into Go struct field "
                                "Message.messages.content of type string")
        role = raw.get("role") or ""
        if not isinstance(role, str):
            raise ApiError(400, "json: cannot unmarshal number into Go struct field "
                                "Message.messages.role of type string")
        for call in raw.get("tool_calls") or []:
            arguments = (call.get("function") or {}).get("arguments") if isinstance(call, dict) \
                else None
            if arguments is not None and not isinstance(arguments, dict):
                raise ApiError(400, "json: cannot unmarshal string into Go struct field "
                                    "ToolCallFunction.messages.tool_calls.function.arguments of "
                                    "type api.ToolCallFunctionArguments")
        messages.append({
            "role": role.lower(),
            "content": content,
            "images": _check_images(raw.get("images"), "Message.messages"),
            "tool_calls": raw.get("tool_calls") or [],
        })
    return messages


def _image_digest(images: list[str]) -> list[str]:
    # the reply depends on the images, not on how long their base64 is
    import hashlib

    return [hashlib.sha256(i.encode()).hexdigest()[:16] for i in images]


# --- preparation ---------------------------------------------------------------------------------


def prepare_chat(node: SimNode, body: dict[str, Any], path: str) -> Job | LoadOnly:
    """Validate an ``/api/chat`` body (already decoded) in ChatHandler's order."""
    keep_alive = parse_keep_alive(body.get("keep_alive"), node.default_keep_alive)
    name = body.get("model") or ""
    if not is_valid_name(name):
        raise ApiError(400, "model is required")
    think = parse_think(body.get("think"))
    messages = _messages(body.get("messages"))
    spec = find_model(node, name)
    slow = node.slow_load_fault(path)
    options_raw = body.get("options")
    if not messages and body.get("keep_alive") is not None and keep_alive == 0:
        return LoadOnly(spec, name, 0, 0, unload=True)
    think_level = resolve_think(spec, name, think)
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise ApiError(400, "json: cannot unmarshal object into Go struct field "
                            "ChatRequest.tools of type api.Tools")
    if "completion" not in spec.capabilities:
        raise ApiError(400, f'"{name}" does not support chat')
    if tools and "tools" not in spec.capabilities:
        raise ApiError(400, f"{full_name(spec.name)} does not support tools")
    fmt = check_format(body.get("format"))
    options = scheduler_options(options_raw)
    num_ctx = num_ctx_for(node, spec, options)
    if not messages:
        return LoadOnly(spec, name, num_ctx, keep_alive, unload=False, slow_load=slow)
    images = sum(len(m["images"]) for m in messages)
    prompt_chars = "".join(f"<|{m['role']}|>{m['content']}" for m in messages)
    prompt_tokens = token_count(prompt_chars) + 3 * len(messages) + images * IMAGE_TOKENS
    if tools:
        prompt_tokens += token_count(json.dumps(tools))
    last = messages[-1]
    last_user = last["content"] if last["role"] == "user" else ""
    key = {
        "chat": [[m["role"], m["content"], _image_digest(m["images"])] for m in messages],
        "format": fmt,
    }
    return Job(spec=spec, name=name, key=key, prompt_tokens=prompt_tokens, num_ctx=num_ctx,
               keep_alive=keep_alive, think=think_level, options=options, fmt=fmt,
               tools=tuple(tools), last_user=last_user, slow_load=slow)


def prepare_generate(node: SimNode, body: dict[str, Any], path: str) -> Job | LoadOnly:
    """Validate an ``/api/generate`` body in GenerateHandler's order."""
    keep_alive = parse_keep_alive(body.get("keep_alive"), node.default_keep_alive)
    name = body.get("model") or ""
    if not is_valid_name(name):
        # Ollama keeps answering 404 here for compatibility (its own comment says so)
        raise ApiError(404, f"model '{name}' not found")
    raw = bool(body.get("raw"))
    if raw and (body.get("template") or body.get("system") or body.get("context")):
        raise ApiError(400, "raw mode does not support template, system, or context")
    think = parse_think(body.get("think"))
    spec = find_model(node, name)
    slow = node.slow_load_fault(path)
    prompt = body.get("prompt") or ""
    images = _check_images(body.get("images"), "GenerateRequest")
    if not prompt and not images and body.get("keep_alive") is not None and keep_alive == 0:
        return LoadOnly(spec, name, 0, 0, unload=True)
    if "completion" not in spec.capabilities:
        raise ApiError(400, f'"{name}" does not support generate')
    if body.get("suffix") and "insert" not in spec.capabilities:
        raise ApiError(400, f"{full_name(spec.name)} does not support insert")
    think_level = resolve_think(spec, name, think)
    fmt = check_format(body.get("format"))
    options = scheduler_options(body.get("options"))
    num_ctx = num_ctx_for(node, spec, options)
    if not prompt and not images:
        return LoadOnly(spec, name, num_ctx, keep_alive, unload=False, slow_load=slow)
    context = body.get("context") or []
    system = body.get("system") or ""
    suffix = body.get("suffix") or ""
    prompt_tokens = (token_count(system + prompt + suffix) + len(context)
                     + len(images) * IMAGE_TOKENS + (0 if raw else 4))
    key = {"generate": [system, prompt, suffix, _image_digest(images)], "format": fmt}
    return Job(spec=spec, name=name, key=key, prompt_tokens=prompt_tokens, num_ctx=num_ctx,
               keep_alive=keep_alive, think=think_level, options=options, fmt=fmt,
               last_user=prompt, slow_load=slow, raw=raw)


# --- running -------------------------------------------------------------------------------------

Emit = Callable[[str, Any], Awaitable[None]]


def _ns(seconds: float) -> int:
    return max(1, int(seconds * 1e9))


async def run_job(node: SimNode, job: Job, emit: Emit) -> tuple[Plan, dict[str, Any]]:
    """Take a slot (loading the model if needed), "decode" the plan token by token, calling
    ``emit(kind, value)`` per step, and return the plan and the final chunk's metrics (ns)."""
    lease = await node.scheduler.acquire(job.spec, job.num_ctx, job.keep_alive,
                                         slow_load=job.slow_load)
    runner = lease.runner
    try:
        plan = plan_reply(job.key, seed=job.options.get("seed"),
                          num_predict=job.options.get("num_predict"), think=job.think,
                          fmt=job.fmt, tools=job.tools, last_user=job.last_user,
                          stop=job.options.get("stop") or ())
        # a prompt longer than the context is truncated, as Ollama does by default
        prompt_tokens = min(job.prompt_tokens, job.num_ctx)
        prompt_s = prompt_tokens / (node.decode_rate(job.spec, runner.active) * PROMPT_SPEEDUP)
        await node.sleep(prompt_s)
        eval_s = 0.0
        # tool calls cost several tokens but arrive as one step
        extra = plan.eval_count - len(plan.steps)
        for kind, value in plan.steps:
            tokens = 1 + (extra if kind == "tool_call" else 0)
            step_s = tokens / node.decode_rate(job.spec, runner.active)
            await node.sleep(step_s)
            eval_s += step_s
            await emit(kind, value)
        if not plan.steps and plan.eval_count:
            step_s = plan.eval_count / node.decode_rate(job.spec, runner.active)
            await node.sleep(step_s)
            eval_s += step_s
    finally:
        node.scheduler.release(runner, job.keep_alive)
    metrics = {
        "total_duration": _ns(lease.load_duration + prompt_s + eval_s + 0.002),
        "load_duration": _ns(lease.load_duration),
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": _ns(prompt_s),
        "eval_count": plan.eval_count,
        "eval_duration": _ns(eval_s),
    }
    # Metrics are omitempty in Go: zero counters are left out
    return plan, {k: v for k, v in metrics.items() if v}
