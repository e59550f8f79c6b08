"""Test helpers for Herd and its plugins, installed as a pytest plugin (entry point ``pytest11``).

Fixtures start the real router and real node agents on loopback sockets:

- ``herd_router(plugins="...", env={...}, extra=[plugin objects])`` -> ``RunningRouter``
- ``herd_agent(router_url, ollama_url, node_id, interval=...)`` -> ``NodeAgent`` (running)

and plain functions build configs and heartbeats without a server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiohttp import web

from herd_kernel.config import ROUTER_SETTINGS, Config, resolve
from herd_kernel.plugins import PluginHost, parse_selection
from herd_node.settings import NODE_SETTINGS


def make_host(plugins: str | None = None, extra: Iterable[object] = ()) -> PluginHost:
    """A plugin host with the installed plugins matching ``plugins`` (None: all) plus ``extra``."""
    host = PluginHost(parse_selection(plugins) if plugins is not None else ())
    for plugin in extra:
        host.register(plugin)
    return host


def make_config(host: PluginHost | None = None, env: Mapping[str, str] | None = None, **flags: Any) -> Config:
    """A resolved config from ``env`` only (never the process environment) plus flags."""
    specs = [*ROUTER_SETTINGS, *NODE_SETTINGS, *(host.settings() if host else ())]
    return resolve(specs, dict(env or {}), flags)


def load_signal(entry: str, env: Mapping[str, str] | None = None) -> Any:
    """The one signal an installed plugin registers, built from ``env`` (e.g. ``signal-thermal``)."""
    host = make_host(entry)
    [signal] = host.signals(make_config(host, env or {}))
    return signal


def load_shapers(entry: str, env: Mapping[str, str] | None = None, *,
                 events: list[tuple[str, dict[str, Any]]] | None = None,
                 fleet: Any = None) -> Any:
    """The kernel's ``Shapers`` over what an installed plugin registers (e.g.
    ``shaper-context``), built from ``env``; routing events go to ``events``. Its
    ``prepare(route, raw, body, engines)`` and ``before(route)`` are what a front calls;
    ``passthrough_engines`` stands in for the engines."""
    from herd_kernel.api import ShapeContext
    from herd_kernel.fleet import Fleet
    from herd_kernel.shaping import Shapers

    host = make_host(entry)
    config = make_config(host, env or {})
    sink = events if events is not None else []

    async def no_post(*args: Any) -> tuple[int, bytes]:
        raise OSError("no engine in this test")

    ctx = ShapeContext(fleet=fleet if fleet is not None else Fleet(), config=config,
                       event=lambda kind, **fields: sink.append((kind, fields)),
                       endpoint_post=no_post)
    return Shapers(host.shapers(config), ctx)


class _Passthrough:
    """An engine that sends the (shaped) bytes as they are."""

    def outbound(self, route: Any, raw: bytes, body: Any, decision: Any) -> Any:
        from herd_kernel.pipeline import Outbound

        return Outbound(body=raw)


passthrough_engines: Mapping[str, Any] = {"ollama": _Passthrough(), "openai": _Passthrough()}


class ShaperHarness:
    """What a front does with the shapers one plugin registers (``load_shapers``), with engines
    that send the shaped bytes as they are: ``outbound(route, raw, body, decision)``."""

    def __init__(self, shapers: Any) -> None:
        self.shapers = shapers

    def outbound(self, route: Any, raw: bytes, body: dict[str, Any], decision: Any) -> Any:
        return self.shapers.prepare(route, raw, body, passthrough_engines)(decision)


def fleet_nodes(*beats: Mapping[str, Any]) -> list[Any]:
    """The registry's ``NodeState`` for each heartbeat body (``heartbeat_payload``), in order."""
    from herd_kernel.fleet import Fleet
    from herd_kernel.models import Heartbeat, structure

    fleet = Fleet()
    for beat in beats:
        fleet.apply_heartbeat(structure(dict(beat), Heartbeat))
    return list(fleet.nodes.values())


def decision_for(model: str = "llama3.2:3b", *, loaded: Iterable[Any] = (),
                 available: Iterable[Any] = (), key: str | None = None,
                 kind: str = "ollama") -> Any:
    """A routing ``Decision`` for ``model`` on one node ``n`` whose endpoint of ``kind`` holds
    ``loaded`` and ``available`` (names or model dicts), as a shaper or engine receives it."""
    from herd_kernel.api import Decision

    [state] = fleet_nodes(heartbeat_payload("n", loaded=list(loaded), available=list(available),
                                            kind=kind))
    return Decision(node=state, model=model, model_key=key or model, score=0, breakdown={},
                    endpoint=state.endpoint(kind))


def scoring_context(
    model: str = "m",
    *,
    config: Config | None = None,
    latency: Any = None,
    **request: Any,
) -> Any:
    """A ScoringContext for a request for ``model``; extra keywords go to the RouteRequest."""
    from herd_kernel.api import ScoringContext
    from herd_kernel.latency import LatencyHistory
    from herd_kernel.models import RouteRequest, normalize_model

    request.setdefault("api", "ollama")
    request.setdefault("path", "/api/chat")
    request.setdefault("stream", True)
    return ScoringContext(
        request=RouteRequest(model=model, **request),
        model=normalize_model(model),
        now=0.0,
        config=config or make_config(),
        latency=latency if latency is not None else LatencyHistory(),
    )


def heartbeat_payload(
    node_id: str,
    *,
    url: str = "http://127.0.0.1:11434",
    loaded: Iterable[str | Mapping[str, Any]] = (),
    available: Iterable[str | Mapping[str, Any]] = (),
    memory_gb: float = 32.0,
    kind: str = "ollama",
    **extra: Any,
) -> dict[str, Any]:
    """A heartbeat body as a node agent would send it: one endpoint of ``kind`` at ``url``."""

    def entry(item: str | Mapping[str, Any]) -> dict[str, Any]:
        return {"name": item} if isinstance(item, str) else dict(item)

    return {
        "node_id": node_id,
        "agent_version": "test",
        "timestamp": time.time(),
        "cpu": {"cores_physical": 8, "cores_logical": 8, "utilization_pct": 5.0},
        "memory": {"total_gb": memory_gb, "used_gb": 4.0, "available_gb": memory_gb - 4.0},
        "disk": {"total_gb": 500.0, "used_gb": 100.0, "available_gb": 400.0},
        "endpoints": [{
            "kind": kind,
            "url": url,
            "version": "0.12.3",
            "models_loaded": [entry(m) for m in loaded],
            "models_available": [entry(m) for m in (*available, *loaded)],
        }],
        **extra,
    }


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll until ``predicate`` is true; fail the test with a clear message on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        await asyncio.sleep(interval)


@attrs.define
class RunningRouter:
    url: str
    app: web.Application
    runner: web.AppRunner

    @property
    def services(self) -> Any:
        from herd_kernel.app import SERVICES

        return self.app[SERVICES]


@pytest.fixture
async def herd_router(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[RunningRouter]]]:
    """Factory: start a real router on 127.0.0.1 with the selected plugins."""
    from herd_kernel.app import create_app, serve

    runners: list[web.AppRunner] = []

    async def start(
        plugins: str | None = None,
        env: Mapping[str, str] | None = None,
        extra: Iterable[object] = (),
    ) -> RunningRouter:
        host = make_host(plugins, extra)
        config = make_config(host, {"FLEET_DATA_DIR": str(tmp_path / "router"), **(env or {})})
        app = create_app(config, host)
        runner, site = await serve(app, "127.0.0.1", 0)
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return RunningRouter(url=f"http://127.0.0.1:{port}", app=app, runner=runner)

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def herd_agent(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Factory: run a real node agent (in this event loop) against a router and an Ollama URL."""
    from herd_node.agent import NodeAgent

    running: list[tuple[Any, asyncio.Task[None]]] = []

    async def start(
        router_url: str,
        ollama_url: str,
        node_id: str,
        *,
        interval: float = 0.2,
        plugins: str | None = None,
        env: Mapping[str, str] | None = None,
        wait: bool = True,
        extra: Iterable[object] = (),
    ) -> NodeAgent:
        host = make_host(plugins, extra)
        config = make_config(
            host,
            {
                "FLEET_NODE_DATA_DIR": str(tmp_path / f"node-{node_id}"),
                # a LAN proxy in a test listens on loopback, on a free port
                "FLEET_NODE_PROXY_HOST": "127.0.0.1",
                "FLEET_NODE_PROXY_PORT": "0",
                **(env or {}),
            },
            FLEET_NODE_ROUTER_URL=router_url,
            FLEET_NODE_OLLAMA_HOST=ollama_url,
            FLEET_NODE_NODE_ID=node_id,
            FLEET_NODE_HEARTBEAT_INTERVAL=interval,
        )
        agent = NodeAgent(config, host)
        task = asyncio.create_task(agent.run())
        running.append((agent, task))
        if wait:
            await wait_for(lambda: agent.heartbeats_sent > 0 or task.done())
            if task.done():
                task.result()
        return agent

    yield start
    for agent, _task in running:
        agent.stop()
    await asyncio.gather(*(task for _, task in running), return_exceptions=True)


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterable[str]:
    """A real llama.cpp engine (llama-cpp-python's OpenAI server) serving SmolLM2 as ``smollm2``.

    Yields its base URL (``http://127.0.0.1:PORT``; the API is under ``/v1``). One server for
    the session, in its own process group, stopped at the end. Needs ``HERD_LLAMA_PYTHON`` and
    ``HERD_TEST_GGUF`` (README, "Tests with a real engine"); without them the test is skipped,
    or fails when ``HERD_REQUIRE_REAL_ENGINE=1`` (CI), so CI never passes by skipping.
    """
    import os
    import signal
    import socket
    import subprocess
    import urllib.request

    python, gguf = os.environ.get("HERD_LLAMA_PYTHON"), os.environ.get("HERD_TEST_GGUF")
    if not (python and gguf):
        why = (
            "no real engine: set HERD_LLAMA_PYTHON and HERD_TEST_GGUF "
            "(README.md, 'Tests with a real engine', says how to build one)"
        )
        if os.environ.get("HERD_REQUIRE_REAL_ENGINE") == "1":
            pytest.fail(f"{why}; HERD_REQUIRE_REAL_ENGINE=1 forbids skipping", pytrace=False)
        pytest.skip(why)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    # a file, not a pipe: the server logs every request and a full pipe would block it
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [python, "-m", "llama_cpp.server", "--model", gguf, "--model_alias", "smollm2",
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail() -> str:
        return log_path.read_bytes()[-3000:].decode(errors="replace")

    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                why = f"llama server exited ({proc.returncode})"
                pytest.fail(f"{why}:\n{log_tail()}", pytrace=False)
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=1):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama server not ready within 60 s:\n{log_tail()}", pytrace=False)
            time.sleep(0.1)
        yield url
    finally:  # by process group, so nothing the server started outlives the session
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except ProcessLookupError:
            proc.wait()
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def health_snapshot(
    *heartbeats: Mapping[str, Any],
    status: Mapping[str, str] | None = None,
    hour: Any = None,
    day: Any = None,
    events: Iterable[Mapping[str, Any]] = (),
    trace_store: Mapping[str, int] | None = None,
    now: float | None = None,
) -> Any:
    """A ``HealthSnapshot`` for a health check's tests, with no server: each heartbeat (see
    ``heartbeat_payload``) applied to a real registry and shown by the real ``/fleet/status``
    view; ``status`` sets nodes' statuses (``{"n1": "offline"}``); ``hour`` and ``day`` are
    ``Window``s (``tally_window``); the rest as ``HealthSnapshot`` holds them."""
    from herd_kernel import __version__
    from herd_kernel.api import HealthSnapshot
    from herd_kernel.app import Services, fleet_status
    from herd_kernel.models import Heartbeat, structure

    host = PluginHost(load_entry_points=False)  # the kernel's own view, no plugin in it
    services = Services(make_config(host, {"FLEET_DATA_DIR": "/nonexistent"}), host)
    for payload in heartbeats:
        services.fleet.apply_heartbeat(structure(dict(payload), Heartbeat), admission="local")
    for node_id, value in (status or {}).items():
        services.fleet.nodes[node_id].status = value  # type: ignore[assignment]
    return HealthSnapshot(
        now=time.time() if now is None else now, router_version=__version__,
        status=fleet_status(services), hour=hour or tally_window(3600), day=day or tally_window(86400),
        events=tuple(events), trace_store=dict(trace_store or {}))


def tally_window(seconds: float = 3600, *, total: Mapping[str, Any] | None = None,
                 by_node: Mapping[str, Mapping[str, Any]] | None = None,
                 by_model: Mapping[str, Mapping[str, Any]] | None = None,
                 events: Mapping[str, int] | None = None,
                 node_events: Mapping[str, Mapping[str, int]] | None = None) -> Any:
    """A ``Window`` from plain counts: ``tally_window(by_node={"n1": {"requests": 40,
    "failed": 12}})``; ``total`` defaults to the sum of ``by_node``."""
    from herd_kernel.api import Tally, Window

    nodes = {k: Tally(**v) for k, v in (by_node or {}).items()}
    if total is None:
        summed = Tally()
        for tally in nodes.values():
            for name in attrs.fields_dict(Tally):
                setattr(summed, name, getattr(summed, name) + getattr(tally, name))
    return Window(seconds=seconds, total=summed if total is None else Tally(**total),
                  by_node=nodes, by_model={k: Tally(**v) for k, v in (by_model or {}).items()},
                  events=dict(events or {}), node_events={k: dict(v) for k, v in
                                                          (node_events or {}).items()})
