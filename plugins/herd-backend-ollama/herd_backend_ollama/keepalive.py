"""``keep_alive`` across the fleet: a load or unload command reaches every node holding the model,
an unload or pin carried by an inference request reaches the other holders in the background, and
the registry notes what the router itself loaded or unloaded without waiting for a heartbeat.

Ollama's rule (``/api/generate``, ``/api/chat``): an empty prompt (or no messages) with
``keep_alive`` only loads or unloads; ``keep_alive`` is a Go duration string or a number of
seconds, 0 unloads, a negative value keeps the model loaded for good.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import web

from herd_kernel.models import NodeState, RouteRequest, Trace
from herd_kernel.wire import error_response

_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                 "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
FOREVER = -1.0
_PINNED_YEAR = 2200  # Ollama reports a negative keep_alive as an expiry ~300 years away


def keep_alive_seconds(value: Any) -> float | None:
    """Seconds of ``keep_alive`` as Ollama reads it (``FOREVER`` when negative), or None when it
    is absent or not a value Ollama accepts (the node then answers its own 400)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        text = text.lstrip("+-")
        if text == "0":
            return 0.0
        parts = _PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            return None
        seconds = sign * sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    else:
        return None
    return FOREVER if seconds < 0 else seconds


def is_command(path: str, body: Mapping[str, Any]) -> bool:
    """A load/unload request: nothing to infer, only a ``keep_alive`` to apply."""
    if "keep_alive" not in body:
        return False
    if path == "/api/generate":
        return not body.get("prompt") and not body.get("images")
    if path == "/api/chat":
        return not body.get("messages")
    return False


def _holders(services: Any, key: str, skip: str | None = None) -> list[NodeState]:
    return sorted(
        (n for n in services.fleet.nodes.values()
         if key in n.loaded and n.status != "offline" and n.node_id != skip
         and (e := n.serving.get(key)) is not None and e.kind == "ollama"),
        key=lambda n: n.node_id,
    )


def _ollama_url(node: NodeState) -> str:
    endpoint = node.endpoint("ollama")
    if endpoint is None:
        raise OSError(f"node {node.node_id} reports no Ollama")
    return endpoint.url


def _pinned(node: NodeState, key: str) -> bool:
    stamp = node.loaded[key].expires_at or ""
    return stamp[:4].isdigit() and int(stamp[:4]) >= _PINNED_YEAR


def note(services: Any, node_id: str, key: str, seconds: float | None) -> None:
    """What a request that went through the router did to a node's memory, noted at once."""
    if seconds == 0:
        services.fleet.remove_loaded(node_id, key)
    else:
        services.fleet.add_loaded(node_id, key)


async def _send(
    services: Any, node: NodeState, path: str, payload: Mapping[str, Any]
) -> tuple[str, bytes]:
    """("ok", the node's answer), or why the node did not take the command."""
    try:
        status, raw = await services.endpoint_post(
            _ollama_url(node), path, payload, services.config["FLEET_READ_TIMEOUT"])
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}".rstrip(": "), b""
    if status == 200:
        return "ok", raw
    try:
        error = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        error = None
    return f"HTTP {status}: {error or raw[:200].decode('utf-8', 'replace')}", b""


class KeepAlive:
    """One per router: the fan-outs in flight (so a burst of requests sends each command once)."""

    def __init__(self, services: Any) -> None:
        self.services = services
        self.tasks: set[asyncio.Task[None]] = set()
        self.busy: set[tuple[str, str, float]] = set()

    async def command(
        self, route: RouteRequest, body: Mapping[str, Any], seconds: float
    ) -> web.Response | None:
        """Send a load/unload command to every node that has the model loaded, concurrently, and
        answer once in Ollama's shape. None when no node has it loaded: route it as usual."""
        services = self.services
        key = route.key
        holders = _holders(services, key)
        if not holders:
            return None
        started = time.monotonic()
        payload = {k: v for k, v in body.items() if k != "fallback_models"}
        payload["stream"] = False
        answers: dict[str, bytes] = {}

        async def one(node: NodeState) -> str:
            outcome, reply = await _send(services, node, route.path, payload)
            if outcome == "ok":
                answers[node.node_id] = reply
                note(services, node.node_id, key, seconds)
            return outcome

        outcomes = dict(zip((n.node_id for n in holders),
                            await asyncio.gather(*(one(n) for n in holders)), strict=True))
        done = [n for n, outcome in outcomes.items() if outcome == "ok"]
        failed = {n: outcome for n, outcome in outcomes.items() if outcome != "ok"}
        services.event("keep_alive_command", model=route.model, keep_alive=body.get("keep_alive"),
                       nodes=done, failed=failed)
        headers = {"X-Request-Id": route.request_id, "X-Fleet-Served-Model": route.model,
                   "X-Fleet-Nodes": ",".join(done)}
        if done:
            headers["X-Fleet-Node"] = done[0]
        if failed:
            headers["X-Fleet-Failed-Nodes"] = ",".join(sorted(failed))
        status = 200 if done else 502
        error = None
        if not done:
            detail = "; ".join(f"{n}: {r}" for n, r in sorted(failed.items()))
            error = f"every node holding model '{route.model}' failed ({detail})"
        services.record(Trace(
            request_id=route.request_id, timestamp=time.time(), model=route.model, api=route.api,
            path=route.path, node_id=None, status="completed" if done else "failed",
            http_status=status, latency_ms=round((time.monotonic() - started) * 1000, 3),
            tags=route.tags, error_message=error, stream=route.stream,
            original_model=route.model,
            details={"keep_alive": body.get("keep_alive"), "nodes": outcomes},
        ))
        if error is not None:
            return error_response("ollama", 502, error, headers=headers)
        # every node answers alike (done_reason "load" or "unload"): relay the first one's words
        return web.Response(status=200, body=answers[done[0]], headers=headers,
                            content_type="application/json", charset="utf-8")

    def spread(self, route: RouteRequest, served_key: str, node_id: str, value: Any,
               seconds: float) -> None:
        """An inference request's unload (0) or pin (negative) applied, in the background, to the
        other nodes holding the model loaded. Positive durations are not spread: clients resend
        them with every request, and they only matter where the model is used."""
        if seconds != 0 and seconds != FOREVER:
            return
        services = self.services
        targets = [n for n in _holders(services, served_key, skip=node_id)
                   if (served_key, n.node_id, seconds) not in self.busy
                   and not (seconds == FOREVER and _pinned(n, served_key))]
        if not targets:
            return
        embed = route.path in ("/api/embed", "/api/embeddings")
        path = "/api/embed" if embed else "/api/generate"
        payload = {"model": route.model if served_key == route.key else served_key,
                   "keep_alive": value, **({"input": []} if embed else {"prompt": ""}),
                   "stream": False}
        for node in targets:
            mark = (served_key, node.node_id, seconds)
            self.busy.add(mark)
            task = asyncio.create_task(self._apply(node, path, payload, served_key, seconds, mark))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _apply(self, node: NodeState, path: str, payload: Mapping[str, Any], key: str,
                     seconds: float, mark: tuple[str, str, float]) -> None:
        try:
            outcome, _ = await _send(self.services, node, path, payload)
            if outcome == "ok":
                note(self.services, node.node_id, key, seconds)
            self.services.event("keep_alive_spread", node_id=node.node_id, model=payload["model"],
                                keep_alive=payload["keep_alive"], outcome=outcome)
        finally:
            self.busy.discard(mark)
