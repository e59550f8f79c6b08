"""Routing quality: the same seeded workload through Herd (every installed ``signal-*`` plugin)
and through three baseline policies (round-robin, random, least-outstanding-requests), each time
on a fresh simulated fleet behind a fresh in-process router.

    uv run --all-packages python -m bench.routing            # from the repository root
    uv run --all-packages python bench/routing/run.py        # the same

Prints one table (mean / p95 latency, mean / p95 time to first token, cold loads, errors per
policy), a second one with where the requests went, and writes both as Markdown to
``bench/routing/results.md`` (``--markdown``). Latencies are in *simulated* seconds: wall-clock
time divided by ``--time-scale``, i.e. what the same workload would take on the real machines the
simulator models. This is a benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import structlog
from aiohttp import web
from herd_sim import PROFILES, NodeProfile, SimFleet

from herd_kernel.api import Candidate, ScoringContext
from herd_kernel.app import SERVICES, create_app
from herd_kernel.hookspecs import hookimpl
from herd_kernel.models import normalize_model
from herd_node.agent import NodeAgent
from herd_kernel.plugins import PluginHost
from herd_kernel.testing import make_config, make_host

HERE = Path(__file__).resolve().parent
DEFAULT_MARKDOWN = HERE / "results.md"
LOOPBACK = "127.0.0.1"

# --- the fleet -----------------------------------------------------------------------------------
#
# One large machine, two medium, two small, with the simulator's speeds for each class
# (tokens/s for a 3B model: 95, 60, 38; load speed 6, 3, 2 GB/s). The small machines are
# someone's laptop: their owner's apps keep 6 GiB, so only ~10 GiB is left for models and the
# four models on their disk do not all fit at once (loading the fourth evicts one).

_SMALL_CHAT = ("llama3.2:3b", "qwen3:8b", "qwen2.5:7b")
_MEDIUM_CHAT = (*_SMALL_CHAT, "gemma3:4b", "qwen2.5-coder:14b")
EMBED = "nomic-embed-text:latest"


def fleet_profiles() -> list[NodeProfile]:
    large, medium, small = PROFILES["large"], PROFILES["medium"], PROFILES["small"]
    return [
        attrs.evolve(large, name="big", num_parallel=2,
                     models=(*_MEDIUM_CHAT, "qwen3:32b", EMBED),
                     loaded=("qwen3:32b", "llama3.2:3b", EMBED)),
        attrs.evolve(medium, name="med-1", num_parallel=2, models=(*_MEDIUM_CHAT, EMBED),
                     loaded=("llama3.2:3b", "qwen3:8b")),
        attrs.evolve(medium, name="med-2", num_parallel=2, models=(*_MEDIUM_CHAT, EMBED),
                     loaded=("llama3.2:3b", "qwen2.5-coder:14b")),
        attrs.evolve(small, name="small-1", num_parallel=1, reserved_gb=6.0,
                     models=(*_SMALL_CHAT, EMBED), loaded=("llama3.2:3b",)),
        attrs.evolve(small, name="small-2", num_parallel=1, reserved_gb=6.0,
                     models=(*_SMALL_CHAT, EMBED), loaded=()),
    ]


# --- the workload --------------------------------------------------------------------------------

# (model, share of requests); the popular small model dominates, as it does in a house
MODEL_MIX: tuple[tuple[str, float], ...] = (
    ("llama3.2:3b", 0.50),
    ("qwen3:8b", 0.13),
    ("qwen2.5:7b", 0.06),
    ("gemma3:4b", 0.05),
    ("qwen2.5-coder:14b", 0.10),
    ("qwen3:32b", 0.06),
    (EMBED, 0.10),
)
# prompt length classes in tokens (the simulator counts ~4 characters per token)
PROMPT_CLASSES = ((0.60, 30, 200), (0.30, 400, 1500), (0.10, 2000, 3800))
NUM_PREDICT = ((None, 0.4), (32, 0.2), (64, 0.2), (128, 0.1), (256, 0.1))
STREAM_SHARE = 0.85
_WORDS = ("the", "fleet", "router", "model", "token", "memory", "queue", "machine", "answer",
          "please", "explain", "why", "summarise", "this", "code", "function", "kitchen",
          "recipe", "garden", "letter", "school", "invoice", "meeting", "travel", "photo")


@attrs.frozen
class Item:
    index: int
    at: float  # simulated seconds after the start of the run
    model: str
    embed: bool
    stream: bool
    prompt_tokens: int
    num_predict: int | None
    text: str


def _text(rng: random.Random, tokens: int) -> str:
    words: list[str] = []
    chars = 0
    while chars < tokens * 4:
        word = rng.choice(_WORDS)
        words.append(word)
        chars += len(word) + 1
    return " ".join(words)


def _pick(rng: random.Random, pairs: Sequence[tuple[Any, float]]) -> Any:
    return rng.choices([p[0] for p in pairs], weights=[p[1] for p in pairs])[0]


def make_schedule(n: int, rate: float, seed: int) -> list[Item]:
    """``n`` requests with exponential inter-arrival times (a Poisson process of ``rate``
    requests per simulated second), the same for every policy given the same seed."""
    rng = random.Random(seed)
    items: list[Item] = []
    at = 0.0
    for index in range(n):
        at += rng.expovariate(rate)
        model = _pick(rng, MODEL_MIX)
        embed = model == EMBED
        if embed:
            tokens = rng.randint(50, 400)
            items.append(Item(index=index, at=at, model=model, embed=True, stream=False,
                              prompt_tokens=tokens, num_predict=None, text=_text(rng, tokens)))
            continue
        _share, low, high = _pick(rng, [(c, c[0]) for c in PROMPT_CLASSES])
        tokens = rng.randint(low, high)
        items.append(Item(
            index=index, at=at, model=model, embed=False,
            stream=rng.random() < STREAM_SHARE, prompt_tokens=tokens,
            num_predict=_pick(rng, NUM_PREDICT), text=_text(rng, tokens),
        ))
    return items


# --- the baseline policies, as tiny in-process signal plugins ------------------------------------


def _by_id(candidates: Sequence[Candidate]) -> list[int]:
    return sorted(range(len(candidates)), key=lambda i: candidates[i].node_id)


class RoundRobinSignal:
    """The next candidate in node-id order (after the one chosen last time) gets +1000."""

    name = "round-robin"
    weight = 1.0
    low = 0.0
    high = 1000.0

    def __init__(self) -> None:
        self.counter = 0

    def score(self, ctx: ScoringContext, candidates: Sequence[Candidate]) -> list[float]:
        points = [0.0] * len(candidates)
        if candidates:
            points[_by_id(candidates)[self.counter % len(candidates)]] = 1000.0
            self.counter += 1
        return points


class RandomSignal:
    """One candidate, drawn by a seeded generator, gets +1000."""

    name = "random"
    weight = 1.0
    low = 0.0
    high = 1000.0

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def score(self, ctx: ScoringContext, candidates: Sequence[Candidate]) -> list[float]:
        points = [0.0] * len(candidates)
        if candidates:
            points[_by_id(candidates)[self.rng.randrange(len(candidates))]] = 1000.0
        return points


class LeastOutstandingSignal:
    """-1000 per request this router has in flight on the node (any model)."""

    name = "least-outstanding"
    weight = 1.0
    low = -1e9
    high = 0.0

    def score(self, ctx: ScoringContext, candidates: Sequence[Candidate]) -> list[float]:
        return [-1000.0 * c.node_in_flight for c in candidates]


class PolicyPlugin:
    """A plugin object registering one signal (``PluginHost.register`` takes it as is)."""

    def __init__(self, signal_obj: Any) -> None:
        self.signal = signal_obj

    @hookimpl
    def herd_signals(self, config: Any) -> list[Any]:
        return [self.signal]


@attrs.frozen
class Policy:
    name: str
    plugins: str
    make_extra: Any = None  # () -> list of plugin objects


def policies(seed: int) -> list[Policy]:
    return [
        Policy("herd (signal-*)", "backend-ollama,signal-*"),
        Policy("round-robin", "backend-ollama", lambda: [PolicyPlugin(RoundRobinSignal())]),
        Policy("random", "backend-ollama", lambda: [PolicyPlugin(RandomSignal(seed))]),
        Policy("least-outstanding", "backend-ollama",
               lambda: [PolicyPlugin(LeastOutstandingSignal())]),
    ]


# --- node agents ---------------------------------------------------------------------------------


class SimNodeAgent(NodeAgent):
    """A real ``NodeAgent`` whose Ollama report carries the simulated machine's
    ``OLLAMA_NUM_PARALLEL``. The Ollama backend reads that from the agent's own environment, which
    is right for one agent per machine but would give every in-process agent the same value."""

    def __init__(self, config: Any, host: PluginHost, num_parallel: int) -> None:
        super().__init__(config, host)
        self.num_parallel = num_parallel

    async def collect(self) -> dict[str, Any]:
        payload = await super().collect()
        ollama = payload.get("ollama")
        if isinstance(ollama, dict) and not ollama.get("num_parallel"):
            ollama["num_parallel"] = self.num_parallel
        return payload


# --- log capture ---------------------------------------------------------------------------------


class LogTap:
    """A structlog processor: counts warnings and errors (per event, per policy), drops the rest.
    A signal that raises is logged by the kernel as "signal failed; scoring it neutral"."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def __call__(self, _logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        key = f"{method}: {event.get('event')}"
        for field in ("signal", "probe", "plugin"):
            if field in event:
                key += f" [{field}={event[field]}]"
        self.counts[key] += 1
        if key not in self.examples:
            self.examples[key] = ", ".join(f"{k}={v}" for k, v in event.items() if k != "event")
        if self.verbose:
            print(f"  log {key} {self.examples[key]}", file=sys.stderr)
        raise structlog.DropEvent

    def take(self) -> dict[str, int]:
        counts = dict(self.counts)
        self.counts.clear()
        return counts


# --- one policy run ------------------------------------------------------------------------------


@attrs.define
class Result:
    item: Item
    ok: bool
    latency: float  # wall seconds, from sending to the last byte
    ttft: float | None = None  # wall seconds to the first streamed line
    node: str | None = None
    status: int | None = None
    error: str | None = None
    breakdown: str | None = None


async def one_request(http: aiohttp.ClientSession, url: str, item: Item) -> Result:
    if item.embed:
        path, body = "/api/embed", {"model": item.model, "input": item.text}
    else:
        body = {"model": item.model, "stream": item.stream,
                "messages": [{"role": "user", "content": item.text}]}
        if item.num_predict is not None:
            body["options"] = {"num_predict": item.num_predict}
        path = "/api/chat"
    started = time.perf_counter()
    ttft = None
    try:
        async with http.post(url + path, json=body) as response:
            node = response.headers.get("X-Fleet-Node")
            breakdown = response.headers.get("X-Fleet-Score-Breakdown")
            error = None
            if item.stream and response.status == 200:
                async for line in response.content:
                    if not line.strip():
                        continue
                    if ttft is None:
                        ttft = time.perf_counter() - started
                    if b'"error"' in line:
                        error = line.decode("utf-8", "replace").strip()[:200]
            else:
                payload = await response.read()
                if response.status != 200:
                    error = payload.decode("utf-8", "replace")[:200]
            latency = time.perf_counter() - started
            return Result(item=item, ok=response.status == 200 and error is None,
                          latency=latency, ttft=ttft, node=node, status=response.status,
                          error=error or (None if response.status == 200 else
                                          f"HTTP {response.status}"),
                          breakdown=breakdown)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return Result(item=item, ok=False, latency=time.perf_counter() - started, ttft=ttft,
                      error=f"{type(exc).__name__}: {exc}"[:200])


async def drive(url: str, schedule: Sequence[Item], time_scale: float,
                timeout_s: float) -> list[Result]:
    """Send every request at its scheduled time (open loop: a slow answer never delays the next
    arrival), wait for all of them."""
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)
    ) as http:
        start = loop.time()
        tasks: list[asyncio.Task[Result]] = []
        try:
            for item in schedule:
                delay = start + item.at * time_scale - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one_request(http, url, item)))
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _wait_ready(services: Any, fleet: SimFleet, timeout: float = 20.0) -> None:
    """Until the router knows every node, online, with its preloaded models."""
    deadline = time.monotonic() + timeout
    want = {
        name: {normalize_model(m) for m in node.profile.loaded}
        for name, node in fleet.nodes.items()
    }
    while True:
        nodes = services.fleet.nodes
        ready = all(
            name in nodes and nodes[name].status == "online" and nodes[name].ollama_url
            and want[name] <= set(nodes[name].loaded)
            and nodes[name].available
            for name in want
        )
        if ready:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the router did not see the whole fleet within {timeout}s")
        await asyncio.sleep(0.05)


@attrs.define
class PolicyRun:
    policy: str
    signals: list[str]
    results: list[Result]
    loads: int
    preloaded: int
    evictions: int
    wall_s: float
    logs: dict[str, int]
    per_node_loads: dict[str, int]
    peak_in_flight: int = 0
    mean_queued: float = 0.0  # requests waiting at the nodes for a slot, sampled every 50 ms
    peak_queued: int = 0


async def run_policy(policy: Policy, schedule: Sequence[Item], args: argparse.Namespace,
                     tap: LogTap) -> PolicyRun:
    profiles = fleet_profiles()
    async with contextlib.AsyncExitStack() as stack:
        data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="herd-bench-routing-")))
        fleet = SimFleet(profiles, host=LOOPBACK, time_scale=args.time_scale)
        await fleet.start()
        stack.push_async_callback(fleet.stop)

        extra = policy.make_extra() if policy.make_extra else []
        host = make_host(policy.plugins, extra=extra)
        # FLEET_SCORE_* from the environment reach Herd's signals, for tuning runs
        tuning = {k: v for k, v in os.environ.items() if k.startswith("FLEET_SCORE_")}
        config = make_config(host, {**tuning, "FLEET_DATA_DIR": str(data / "router"),
                                    "FLEET_HOST": LOOPBACK, "FLEET_LOG_LEVEL": "WARNING"})
        app = create_app(config, host)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, LOOPBACK, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"http://{LOOPBACK}:{port}"
        services = app[SERVICES]

        for name, node in fleet.nodes.items():
            node_host = make_host("backend-ollama,node-simhardware")
            node_config = make_config(
                node_host, {"FLEET_NODE_DATA_DIR": str(data / f"node-{name}")},
                FLEET_NODE_ROUTER_URL=url, FLEET_NODE_OLLAMA_HOST=node.url,
                FLEET_NODE_NODE_ID=name, FLEET_NODE_HEARTBEAT_INTERVAL=args.heartbeat,
                FLEET_NODE_SIM_HARDWARE=True,
            )
            agent = SimNodeAgent(node_config, node_host, node.profile.num_parallel)
            task = asyncio.create_task(agent.run(), name=f"bench-agent-{name}")

            async def stop_agent(agent: SimNodeAgent = agent, task: asyncio.Task = task) -> None:
                agent.stop()
                try:
                    await asyncio.wait_for(asyncio.shield(task), 5)
                except (TimeoutError, asyncio.CancelledError):
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)

            stack.push_async_callback(stop_agent)

        await _wait_ready(services, fleet)
        preloaded = sum(n.stats["loads"] for n in fleet.nodes.values())
        signals = [s.name for s in services.signals]
        tap.take()
        samples: list[tuple[int, int]] = []

        async def sample() -> None:
            while True:
                queued = sum(n.scheduler.queued for n in fleet.nodes.values())
                samples.append((services.fleet.requests_active, queued))
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample(), name="bench-sampler")
        t0 = time.perf_counter()
        try:
            results = await drive(url, schedule, args.time_scale, args.timeout)
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        wall = time.perf_counter() - t0
        per_node_loads = {name: n.stats["loads"] - len(n.profile.loaded)
                          for name, n in fleet.nodes.items()}
        loads = sum(n.stats["loads"] for n in fleet.nodes.values())
        evictions = sum(n.stats["evictions"] for n in fleet.nodes.values())
    return PolicyRun(policy=policy.name, signals=signals, results=results, loads=loads,
                     preloaded=preloaded, evictions=evictions, wall_s=wall, logs=tap.take(),
                     per_node_loads=per_node_loads,
                     peak_in_flight=max((a for a, _ in samples), default=0),
                     mean_queued=statistics.fmean(q for _, q in samples) if samples else 0.0,
                     peak_queued=max((q for _, q in samples), default=0))


# --- numbers and tables --------------------------------------------------------------------------


def p95(values: Sequence[float]) -> float:
    """Nearest-rank 95th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def summarise(run: PolicyRun, time_scale: float) -> dict[str, Any]:
    ok = [r for r in run.results if r.ok]
    lat = [r.latency / time_scale for r in ok]
    ttft = [r.ttft / time_scale for r in ok if r.item.stream and r.ttft is not None]
    return {
        "policy": run.policy,
        "requests": len(run.results),
        "errors": len(run.results) - len(ok),
        "mean_latency_s": statistics.fmean(lat) if lat else float("nan"),
        "p95_latency_s": p95(lat) if lat else float("nan"),
        "mean_ttft_s": statistics.fmean(ttft) if ttft else float("nan"),
        "p95_ttft_s": p95(ttft) if ttft else float("nan"),
        "cold_loads": run.loads - run.preloaded,
        "evictions": run.evictions,
        "wall_s": run.wall_s,
        "peak_in_flight": run.peak_in_flight,
        "mean_queued": run.mean_queued,
        "peak_queued": run.peak_queued,
    }


COLUMNS = (
    ("policy", "policy", "{}"),
    ("mean latency s", "mean_latency_s", "{:.2f}"),
    ("p95 latency s", "p95_latency_s", "{:.2f}"),
    ("mean TTFT s", "mean_ttft_s", "{:.2f}"),
    ("p95 TTFT s", "p95_ttft_s", "{:.2f}"),
    ("cold loads", "cold_loads", "{}"),
    ("evictions", "evictions", "{}"),
    ("errors", "errors", "{}"),
)
# how loaded the fleet was: requests in flight at the router, requests waiting at nodes for a slot
LOAD_COLUMNS = (
    ("policy", "policy", "{}"),
    ("peak in flight", "peak_in_flight", "{}"),
    ("mean queued at nodes", "mean_queued", "{:.1f}"),
    ("peak queued at nodes", "peak_queued", "{}"),
    ("wall s", "wall_s", "{:.1f}"),
)


def breakdown_rows(run: PolicyRun) -> tuple[list[str], list[list[str]]]:
    """Per signal, over the chosen nodes' score breakdowns (``X-Fleet-Score-Breakdown``): how
    often it gave the winner non-zero points, and the mean and range of those points."""
    values: dict[str, list[float]] = {}
    decided = 0
    for r in run.results:
        if not r.breakdown:
            continue
        decided += 1
        for part in r.breakdown.split(";"):
            name, _, value = part.partition("=")
            with contextlib.suppress(ValueError):
                values.setdefault(name, []).append(float(value))
    headers = ["signal", "non-zero for winner", "mean points", "min", "max"]
    cells = []
    for name in sorted(values):
        v = values[name]
        cells.append([name, f"{sum(1 for x in v if x)}/{decided}", f"{statistics.fmean(v):.1f}",
                      f"{min(v):g}", f"{max(v):g}"])
    return headers, cells


def _cells(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> list[list[str]]:
    return [[fmt.format(row[key]) for _title, key, fmt in columns] for row in rows]


def text_table(headers: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(headers, widths, strict=True)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    return "\n".join(lines)


def md_table(headers: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def node_share_rows(runs: Sequence[PolicyRun], nodes: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Where each policy sent its requests: all requests, and the popular 3B model alone."""
    headers = ["policy", *nodes, "3B on small", "32B/14B on big"]
    cells = []
    for run in runs:
        counts = Counter(r.node for r in run.results if r.node)
        small3 = [r for r in run.results if r.item.model == "llama3.2:3b" and r.node]
        big = [r for r in run.results
               if r.item.model in ("qwen2.5-coder:14b", "qwen3:32b") and r.node]
        cells.append([
            run.policy, *(str(counts.get(n, 0)) for n in nodes),
            f"{sum(r.node.startswith('small') for r in small3)}/{len(small3)}",
            f"{sum(r.node == 'big' for r in big)}/{len(big)}",
        ])
    return headers, cells


def model_latency_rows(runs: Sequence[PolicyRun], time_scale: float) -> tuple[list[str], list[list[str]]]:
    models = [m for m, _ in MODEL_MIX]
    headers = ["policy", *(f"{m} p95" for m in models)]
    cells = []
    for run in runs:
        row = [run.policy]
        for model in models:
            lat = [r.latency / time_scale for r in run.results if r.ok and r.item.model == model]
            row.append(f"{p95(lat):.2f}" if lat else "-")
        cells.append(row)
    return headers, cells


def describe_fleet() -> list[str]:
    out = []
    for p in fleet_profiles():
        usable = p.usable_bytes / 1024**3
        out.append(
            f"- `{p.name}`: {p.memory_gb:g} GiB ({usable:.1f} GiB usable for models), "
            f"{p.tokens_per_s:g} tok/s for a 3B model, loads {p.load_gbps:g} GB/s, "
            f"num_parallel {p.num_parallel}; on disk: {', '.join(p.models)}; "
            f"loaded at start: {', '.join(p.loaded) or 'nothing'}"
        )
    return out


def markdown_report(rows: list[dict[str, Any]], runs: Sequence[PolicyRun],
                    args: argparse.Namespace, command: str, schedule: Sequence[Item]) -> str:
    nodes = [p.name for p in fleet_profiles()]
    share_h, share_c = node_share_rows(runs, nodes)
    model_h, model_c = model_latency_rows(runs, args.time_scale)
    span = schedule[-1].at if schedule else 0.0
    mix = Counter(i.model for i in schedule)
    lines = [
        "# Routing quality: results",
        "",
        f"Run on {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} "
        f"({platform.system()} {platform.machine()}, Python {platform.python_version()}), "
        f"command: `{command}`.",
        "",
        f"Workload: {len(schedule)} requests, seed {args.seed}, Poisson arrivals at "
        f"{args.rate:g} requests per simulated second over {span:.0f} simulated s; "
        f"time_scale {args.time_scale:g}, heartbeat every {args.heartbeat:g} s (wall). "
        "Model mix: " + ", ".join(f"{m} {c}" for m, c in mix.most_common()) + ". "
        "Latencies in simulated seconds (wall time / time_scale).",
        "",
        md_table([c[0] for c in COLUMNS], _cells(rows, COLUMNS)),
        "",
        "Requests per node:",
        "",
        md_table(share_h, share_c),
        "",
        "p95 latency per model (simulated s):",
        "",
        md_table(model_h, model_c),
        "",
        "Load (requests in flight at the router; requests waiting at the nodes for a slot):",
        "",
        md_table([c[0] for c in LOAD_COLUMNS], _cells(rows, LOAD_COLUMNS)),
        "",
        *(["Herd's signals, over the winning node of each decision:", "",
           md_table(*breakdown_rows(runs[0])), ""] if runs and runs[0].policy.startswith("herd")
          else []),
        "Fleet:",
        "",
        *describe_fleet(),
        "",
        "Signals in the Herd run: " + ", ".join(f"`{s}`" for s in runs[0].signals)
        if runs and runs[0].policy.startswith("herd") else "",
        "",
    ]
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------


async def amain(args: argparse.Namespace, tap: LogTap) -> list[PolicyRun]:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, task.cancel)  # type: ignore[union-attr]
    schedule = make_schedule(args.requests, args.rate, args.seed)
    chosen = [p for p in policies(args.seed)
              if not args.policies or any(p.name.startswith(x) for x in args.policies)]
    runs = []
    for policy in chosen:
        print(f"running {policy.name} ...", file=sys.stderr, flush=True)
        run = await run_policy(policy, schedule, args, tap)
        row = summarise(run, args.time_scale)
        print(f"  done in {run.wall_s:.1f} s wall: p95 {row['p95_latency_s']:.2f} s, "
              f"{row['cold_loads']} cold loads, {row['errors']} errors"
              + (f"; signals: {', '.join(run.signals)}" if policy.name.startswith("herd") else ""),
              file=sys.stderr, flush=True)
        for key, count in sorted(run.logs.items()):
            print(f"  log x{count} {key}: {tap.examples.get(key, '')[:300]}", file=sys.stderr)
        runs.append(run)
    return runs


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rate", type=float, default=2.0,
                        help="arrivals per simulated second (default 2.0)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--time-scale", type=float, default=0.2,
                        help="wall seconds per simulated second (default 0.2)")
    parser.add_argument("--heartbeat", type=float, default=0.25,
                        help="node agent heartbeat interval, wall seconds (default 0.25)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="per-request client timeout, wall seconds")
    parser.add_argument("--policies", nargs="*", default=None,
                        help="only these policies (name prefixes: herd round-robin random least)")
    parser.add_argument("--markdown", type=Path, default=DEFAULT_MARKDOWN,
                        help=f"where to write the Markdown report (default {DEFAULT_MARKDOWN})")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows and every request (node, latency, score breakdown) as JSON")
    parser.add_argument("--verbose", action="store_true", help="print every warning as it happens")
    args = parser.parse_args(argv)
    if args.time_scale <= 0:
        parser.error("--time-scale must be > 0 (latencies are reported in simulated seconds)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tap = LogTap(args.verbose)
    structlog.configure(
        processors=[tap],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    script = sys.argv[0].endswith("run.py")
    command = "uv run --all-packages python " + (
        "bench/routing/run.py" if script else "-m bench.routing") + (
        " " + " ".join(sys.argv[1:]) if argv is None and sys.argv[1:] else "")
    try:
        runs = asyncio.run(amain(args, tap))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; everything started has been stopped", file=sys.stderr)
        return 130
    schedule = make_schedule(args.requests, args.rate, args.seed)
    rows = [summarise(r, args.time_scale) for r in runs]
    nodes = [p.name for p in fleet_profiles()]
    print()
    print(f"Routing quality: {len(schedule)} requests, seed {args.seed}, rate {args.rate:g}/s, "
          f"time_scale {args.time_scale:g}; latencies in simulated seconds")
    print(text_table([c[0] for c in COLUMNS], _cells(rows, COLUMNS)))
    print()
    print("Requests per node")
    print(text_table(*node_share_rows(runs, nodes)))
    print()
    print("p95 latency per model (simulated s)")
    print(text_table(*model_latency_rows(runs, args.time_scale)))
    print()
    print("Load")
    print(text_table([c[0] for c in LOAD_COLUMNS], _cells(rows, LOAD_COLUMNS)))
    herd = [r for r in runs if r.policy.startswith("herd")]
    if herd:
        print()
        print("Herd's signals over the winning node of each decision")
        print(text_table(*breakdown_rows(herd[0])))
    report = markdown_report(rows, runs, args, command, schedule)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(report)
    print(f"\nMarkdown written to {args.markdown}")
    if args.json:
        requests = [
            {"policy": run.policy, "index": r.item.index, "at": r.item.at, "model": r.item.model,
             "stream": r.item.stream, "prompt_tokens": r.item.prompt_tokens, "node": r.node,
             "ok": r.ok, "latency_s": r.latency / args.time_scale,
             "ttft_s": None if r.ttft is None else r.ttft / args.time_scale,
             "error": r.error, "breakdown": r.breakdown}
            for run in runs for r in run.results
        ]
        args.json.write_text(json.dumps({"rows": rows, "requests": requests}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
