"""Node side: the OpenAI-compatible engines on this machine, one heartbeat endpoint each. URLs come
from ``FLEET_NODE_OPENAI_URLS`` and, when ``FLEET_NODE_OPENAI_PROBE`` is on, from the usual local
ports; each is asked ``/v1/models`` and ``/health`` every heartbeat, and once (until its model
list changes) what engine it is."""

from __future__ import annotations

import asyncio
import math
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog

from herd_backend_openai.translate import loads
from herd_kernel.api import NodeContext
from herd_kernel.config import Setting

log = structlog.get_logger("herd.backend.openai")

SETTINGS = (
    Setting(env="FLEET_NODE_OPENAI_URLS", type=str, default="", scope="node",
            help="OpenAI-compatible engines on this machine (llama.cpp's llama-server, vLLM, LM "
            "Studio, mlx_lm.server), comma-separated base URLs, e.g. "
            "http://127.0.0.1:8080,http://127.0.0.1:8000. Each is reported in every heartbeat, "
            "unhealthy while it does not answer.", flag="--openai-url", repeat=True),
    Setting(env="FLEET_NODE_OPENAI_PROBE", type=bool, default=False, scope="node",
            help="Also look for OpenAI-compatible engines on the usual local ports: 1234 (LM "
            "Studio), 8080 (llama.cpp, mlx_lm.server), 8000 (vLLM). A port where none answers "
            "is left out of the heartbeat."),
)
LOCAL_PORTS = (1234, 8080, 8000)
ENGINES = ("llama.cpp", "vllm", "lm-studio", "mlx-lm", "openai-compatible")
_OWNED_BY = {"llamacpp": "llama.cpp", "vllm": "vllm", "organization_owner": "lm-studio",
             "me": "llama.cpp"}  # "me": llama-cpp-python's server
_MAX_BODY = 4 * 2**20  # a model list is kilobytes; more is not an engine worth reading
_EMBEDDING_HINTS = ("embed", "minilm", "bge-", "e5-", "gte-")


def base_url(raw: str) -> str:
    """``host:port``, ``http://host:port/`` or ``http://host:port/v1`` as ``http://host:port``."""
    url = raw.strip().rstrip("/")
    if url and "://" not in url:
        url = f"http://{url}"
    url = url.removesuffix("/v1")
    return url


def _host_port(url: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    if host in ("localhost", "::1", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return host, port


def endpoint_urls(config: Any) -> tuple[list[str], list[str]]:
    """``(configured, probed)`` base URLs. Probed ports skip this node's own Ollama, the router
    and the agent's proxy when they sit on one of them."""
    configured: list[str] = []
    for item in str(config["FLEET_NODE_OPENAI_URLS"] or "").split(","):
        url = base_url(item)
        if url and url not in configured:
            configured.append(url)
    if not config["FLEET_NODE_OPENAI_PROBE"]:
        return configured, []
    taken = {_host_port(u) for u in configured}
    taken.add(_host_port(str(config["FLEET_NODE_OLLAMA_HOST"])))
    router = str(config.get("FLEET_NODE_ROUTER_URL") or "")
    if router:
        taken.add(_host_port(router))
    router_port = config.get("FLEET_PORT")
    proxy_port = config.get("FLEET_NODE_PROXY_PORT")
    probed = [f"http://127.0.0.1:{port}" for port in LOCAL_PORTS
              if ("127.0.0.1", port) not in taken and port not in (router_port, proxy_port)]
    return configured, probed


class ProbeState:
    """Kept by the agent across heartbeats: what each engine is (asked once per model list) and
    whether it was healthy last time (logged on change only, never every heartbeat)."""

    def __init__(self) -> None:
        self.identity: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {}
        self.healthy: dict[str, bool] = {}
        # engines that stop a running stream when any request needing their model arrives
        # (llama-cpp-python's server, ``interrupt_requests`` on by default, takes its model lock
        # even for /v1/models): their model list, asked once while they stay up
        self.quiet: dict[str, _Answer] = {}

    def note(self, url: str, healthy: bool, configured: bool) -> None:
        before = self.healthy.get(url)
        self.healthy[url] = healthy
        if before == healthy or (before is None and not healthy and not configured):
            return
        if healthy:
            log.info("openai endpoint up", url=url)
        else:
            log.warning("openai endpoint down", url=url)
            self.identity.pop(url, None)  # it may come back as another engine


class _Answer:
    __slots__ = ("body", "server", "status")

    def __init__(self, status: int, server: str, body: Any) -> None:
        self.status = status
        self.server = server
        self.body = body


async def _get(http: aiohttp.ClientSession, url: str, timeout: aiohttp.ClientTimeout,
               ) -> _Answer | None:
    """Status, Server header and JSON body (None when not JSON); None when nothing answered."""
    try:
        async with http.get(url, timeout=timeout, allow_redirects=False) as response:
            raw = b""
            while len(raw) <= _MAX_BODY and (chunk := await response.content.readany()):
                raw += chunk
            if len(raw) > _MAX_BODY:
                raw = b""
            return _Answer(response.status, response.headers.get("Server", ""), loads(raw))
    except (TimeoutError, aiohttp.ClientError, OSError, RuntimeError):
        return None  # RuntimeError: the agent closed its session while stopping


def _count(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int) and 0 < value < 2**40:
        return value
    if isinstance(value, float) and math.isfinite(value) and 0 < value < 2**40:
        return int(value)
    return 0


def _model_entries(body: Any) -> list[dict[str, Any]]:
    data = body.get("data") if isinstance(body, dict) else None
    return [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str) and m["id"]
            ] if isinstance(data, list) else []


def _capabilities(model_id: str, hints: Any) -> list[str]:
    if isinstance(hints, list) and any(isinstance(h, str) for h in hints):
        return [h for h in hints if isinstance(h, str)]
    lowered = model_id.lower()
    return ["embedding"] if any(h in lowered for h in _EMBEDDING_HINTS) else ["completion"]


def _guess_engine(models: Any, server: str) -> str:
    for entry in _model_entries(models):
        engine = _OWNED_BY.get(entry.get("owned_by"))  # type: ignore[arg-type]
        if engine:
            return engine
        if _count(entry.get("max_model_len")):
            return "vllm"
        if isinstance(entry.get("meta"), dict):
            return "llama.cpp"
    if isinstance(models, dict) and isinstance(models.get("models"), list):
        return "llama.cpp"  # llama-server lists an Ollama-like "models" beside "data"
    lowered = server.lower()
    if "llama" in lowered:
        return "llama.cpp"
    if lowered.startswith("basehttp"):
        return "mlx-lm"  # mlx_lm.server runs on Python's http.server
    return ""


async def _identify(http: aiohttp.ClientSession, url: str, timeout: aiohttp.ClientTimeout,
                    models: _Answer, health: _Answer | None) -> dict[str, Any]:
    """Engine, version, parallelism and loaded context, best effort; asked once per model list."""
    engine = _guess_engine(models.body, models.server or (health.server if health else ""))
    info: dict[str, Any] = {"engine": engine or "openai-compatible", "version": "",
                            "num_parallel": 0, "n_ctx": 0}
    if engine in ("", "llama.cpp"):
        props = await _get(http, f"{url}/props", timeout)
        if props is not None and props.status == 200 and isinstance(props.body, dict):
            info["engine"] = "llama.cpp"
            settings = props.body.get("default_generation_settings")
            info["n_ctx"] = _count(settings.get("n_ctx")) if isinstance(settings, dict) else 0
            info["num_parallel"] = _count(props.body.get("total_slots"))
            build = props.body.get("build_info")
            info["version"] = build if isinstance(build, str) else ""
            return info
    if engine in ("", "vllm"):
        version = await _get(http, f"{url}/version", timeout)
        if version is not None and version.status == 200 and isinstance(version.body, dict) \
                and isinstance(version.body.get("version"), str):
            info["engine"] = "vllm"
            info["version"] = version.body["version"]
            return info
    if engine in ("", "lm-studio"):
        lms = await _get(http, f"{url}/api/v0/models", timeout)
        if lms is not None and lms.status == 200 and _model_entries(lms.body):
            info["engine"] = "lm-studio"
    return info


def _models(models: _Answer | None, info: dict[str, Any], lms: _Answer | None,
            ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    available: list[dict[str, Any]] = []
    loaded: list[dict[str, Any]] = []
    studio = {m["id"]: m for m in _model_entries(lms.body)} if lms is not None else {}
    llama_models = models.body.get("models") if models and isinstance(models.body, dict) else None
    hints = {m.get("model") or m.get("name"): m.get("capabilities")
             for m in llama_models if isinstance(m, dict)} if isinstance(llama_models, list) else {}
    for entry in _model_entries(models.body if models else None):
        model_id = entry["id"]
        meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
        extra = studio.get(model_id, {})
        trained = (_count(meta.get("n_ctx_train")) or _count(entry.get("max_model_len"))
                   or _count(extra.get("max_context_length")))
        caps = _capabilities(model_id, hints.get(model_id))
        if extra.get("type") == "embeddings":
            caps = ["embedding"]
        elif extra.get("type") == "vlm" and "vision" not in caps:
            caps = [*caps, "vision"]
        available.append({"name": model_id, "size_bytes": 0, "context_length": trained,
                          "capabilities": caps})
        if studio:  # LM Studio lists what is on disk; only "loaded" ones are in memory
            if extra.get("state") == "loaded":
                ctx = _count(extra.get("loaded_context_length")) or trained
                loaded.append({"name": model_id, "context_length": ctx})
        else:  # these engines serve the model they were started with, always loaded
            loaded.append({"name": model_id, "context_length": info.get("n_ctx") or trained})
    return available, loaded


def _interrupts(models: _Answer) -> bool:
    """llama-cpp-python's server (models ``owned_by: "me"``): a request for its model list would
    end whatever it is streaming."""
    return any(m.get("owned_by") == "me" for m in _model_entries(models.body))


async def _endpoint(http: aiohttp.ClientSession, url: str, timeout: aiohttp.ClientTimeout,
                    state: ProbeState, configured: bool) -> dict[str, Any] | None:
    cached = state.quiet.get(url)
    if cached is not None:
        # only a route outside its model lock (its /health is a plain 404): any answer means it
        # is up and serves the models it listed; none means it is down, and is listed again
        health = await _get(http, f"{url}/health", timeout)
        models = cached if health is not None else None
        if models is None:
            del state.quiet[url]
    else:
        models, health = await asyncio.gather(_get(http, f"{url}/v1/models", timeout),
                                              _get(http, f"{url}/health", timeout))
    listed = models is not None and models.status == 200 and isinstance(models.body, dict) \
        and isinstance(models.body.get("data"), list)
    if not configured and not listed:
        state.note(url, False, configured)
        return None  # a probed port without an engine is no endpoint
    if listed and cached is None and _interrupts(models):  # type: ignore[arg-type]
        state.quiet[url] = models  # type: ignore[assignment]
    if health is not None and health.status in (200, 503):
        healthy = health.status == 200 and listed
    else:
        healthy = listed
    report: dict[str, Any] = {"kind": "openai", "url": url, "engine": "openai-compatible",
                              "version": "", "healthy": healthy, "num_parallel": 0,
                              "models_available": [], "models_loaded": []}
    state.note(url, healthy, configured)
    if not listed:
        return report
    assert models is not None
    ids = tuple(m["id"] for m in _model_entries(models.body))
    known = state.identity.get(url)
    if known is None or known[0] != ids:
        known = (ids, await _identify(http, url, timeout, models, health))
        state.identity[url] = known
    info = known[1]
    lms = await _get(http, f"{url}/api/v0/models", timeout) \
        if info["engine"] == "lm-studio" else None
    available, loaded = _models(models, info, lms)
    report.update(engine=info["engine"], version=info["version"],
                  num_parallel=info["num_parallel"], models_available=available,
                  models_loaded=loaded if healthy else [])
    return report


async def probe(ctx: NodeContext, state: ProbeState | None = None) -> dict[str, Any]:
    """``{"endpoints": [...]}``: every configured engine, and every probed port that answered.
    Never raises: an engine that does not answer in time is reported unhealthy, with no models."""
    state = state if state is not None else ProbeState()
    configured, probed = endpoint_urls(ctx.config)
    budget = max(0.2, ctx.budget * 0.9)  # inside the agent's budget, so the answer is not lost
    timeout = aiohttp.ClientTimeout(total=budget)

    async def one(url: str, is_configured: bool) -> dict[str, Any] | None:
        try:
            async with asyncio.timeout(budget):
                return await _endpoint(ctx.http, url, timeout, state, is_configured)
        except TimeoutError:
            state.note(url, False, is_configured)
            if not is_configured:
                return None
            return {"kind": "openai", "url": url, "engine": "openai-compatible", "version": "",
                    "healthy": False, "num_parallel": 0, "models_available": [],
                    "models_loaded": []}

    reports = await asyncio.gather(*(one(u, True) for u in configured),
                                   *(one(u, False) for u in probed))
    return {"endpoints": [r for r in reports if r is not None]}
