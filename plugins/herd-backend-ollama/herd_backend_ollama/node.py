"""Node side of the Ollama backend: what the local Ollama has loaded (``/api/ps``), what it has on
disk with sizes (``/api/tags``) and its version (``/api/version``), fetched concurrently once per
heartbeat; and what each model can do (``/api/show`` ``capabilities``), asked once per model
digest, in the background, when ``/api/tags`` does not say (older Ollama versions)."""

from __future__ import annotations

import asyncio
import collections
import os
from typing import Any

import aiohttp

from herd_kernel.api import NodeContext
from herd_kernel.config import Setting

SETTINGS = (
    Setting(env="FLEET_NODE_OLLAMA_NUM_PARALLEL", type=int, default=0, scope="node",
            help="Requests the local Ollama runs at once per model, as its OLLAMA_NUM_PARALLEL "
            "says; the router queues the rest. 0: read OLLAMA_NUM_PARALLEL from this agent's "
            "environment (set this when Ollama runs under another service manager)."),
)

_TIMEOUT = aiohttp.ClientTimeout(total=3.0)


async def _get(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url, timeout=_TIMEOUT) as response:
        response.raise_for_status()
        body = await response.json(content_type=None)
        if not isinstance(body, dict):
            raise ValueError(f"{url} did not return a JSON object")
        return body


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _details(entry: dict[str, Any]) -> dict[str, Any]:
    details = entry.get("details")
    return details if isinstance(details, dict) else {}


def loaded_models(ps: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for entry in ps.get("models") or []:
        if not isinstance(entry, dict):
            continue
        name = entry.get("model") or entry.get("name")
        if not isinstance(name, str) or not name:
            continue
        out.append({
            "name": name,
            "size_bytes": _int(entry.get("size")),
            "size_vram": _int(entry.get("size_vram")),
            "context_length": _int(entry.get("context_length")),
            "expires_at": entry.get("expires_at") if isinstance(entry.get("expires_at"), str) else None,
            "digest": entry.get("digest") if isinstance(entry.get("digest"), str) else "",
            "details": _details(entry),
        })
    return out


def available_models(tags: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for entry in tags.get("models") or []:
        if not isinstance(entry, dict):
            continue
        name = entry.get("model") or entry.get("name")
        if not isinstance(name, str) or not name:
            continue
        caps = entry.get("capabilities")
        details = _details(entry)
        out.append({
            "name": name,
            "size_bytes": _int(entry.get("size")),
            "modified_at": entry.get("modified_at") if isinstance(entry.get("modified_at"), str) else None,
            "digest": entry.get("digest") if isinstance(entry.get("digest"), str) else "",
            "details": details,
            "capabilities": [c for c in caps if isinstance(c, str)] if isinstance(caps, list) else [],
            "context_length": _int(details.get("context_length")),
        })
    return out


class Capabilities:
    """What each model can do, by digest (a digest names one exact model, so it never goes stale),
    learnt from ``/api/show`` off the heartbeat's path: a probe reports what is known and starts
    asking about the rest, so a heartbeat never waits for it. At most ``limit`` models are
    remembered (the least recently reported go first) and ``batch`` asked at once."""

    def __init__(self, limit: int = 512, batch: int = 8) -> None:
        self.limit = limit
        self.batch = batch
        self.known: collections.OrderedDict[str, tuple[str, ...]] = collections.OrderedDict()
        self.task: asyncio.Task[None] | None = None

    @staticmethod
    def _key(model: dict[str, Any]) -> str:
        return model["digest"] or f"{model['name']}@{model['modified_at'] or ''}"

    def fill(self, http: aiohttp.ClientSession, base: str, models: list[dict[str, Any]]) -> None:
        """Give ``models`` (``available_models`` entries) the capabilities known for them; ask
        ``/api/show`` in the background about those with none."""
        unknown: dict[str, str] = {}
        for model in models:
            if model["capabilities"]:
                continue  # /api/tags said
            key = self._key(model)
            caps = self.known.get(key)
            if caps is not None:
                self.known.move_to_end(key)
                model["capabilities"] = list(caps)
            else:
                unknown.setdefault(key, model["name"])
        if unknown and (self.task is None or self.task.done()):
            wanted = list(unknown.items())[: self.batch]
            self.task = asyncio.create_task(self._learn(http, base, wanted))

    async def _learn(
        self, http: aiohttp.ClientSession, base: str, wanted: list[tuple[str, str]]
    ) -> None:
        async def show(key: str, name: str) -> None:
            try:
                async with http.post(f"{base}/api/show", json={"model": name},
                                     timeout=_TIMEOUT) as response:
                    if response.status != 200:
                        return  # asked again next heartbeat
                    body = await response.json(content_type=None)
            except (TimeoutError, aiohttp.ClientError, ValueError, RuntimeError):
                return  # RuntimeError: the agent closed its session while stopping
            caps = body.get("capabilities") if isinstance(body, dict) else None
            if isinstance(caps, list):
                self.known[key] = tuple(c for c in caps if isinstance(c, str))
                while len(self.known) > self.limit:
                    self.known.popitem(last=False)

        await asyncio.gather(*(show(key, name) for key, name in wanted))


async def probe(ctx: NodeContext, capabilities: Capabilities | None = None) -> dict[str, Any]:
    base = str(ctx.config["FLEET_NODE_OLLAMA_HOST"]).rstrip("/")
    if "://" not in base:
        base = f"http://{base}"
    ps, tags, version = await asyncio.gather(
        _get(ctx.http, f"{base}/api/ps"),
        _get(ctx.http, f"{base}/api/tags"),
        _get(ctx.http, f"{base}/api/version"),
        return_exceptions=True,
    )
    healthy = not any(isinstance(r, BaseException) for r in (ps, tags, version))
    available = available_models(tags) if isinstance(tags, dict) else []
    if capabilities is not None and available:
        capabilities.fill(ctx.http, base, available)
    report: dict[str, Any] = {
        "kind": "ollama",
        "engine": "ollama",
        "url": base,
        "healthy": healthy,
        "version": version.get("version", "") if isinstance(version, dict) else "",
        "models_loaded": loaded_models(ps) if isinstance(ps, dict) else [],
        # without a model list this node must not be offered work it cannot prove it can do
        "models_available": available,
        "num_parallel": max(0, ctx.config["FLEET_NODE_OLLAMA_NUM_PARALLEL"])
        or _int_env("OLLAMA_NUM_PARALLEL"),
    }
    return {"endpoints": [report]}


def _int_env(name: str) -> int:
    try:
        return max(0, int(os.environ.get(name, "0")))
    except ValueError:
        return 0
