"""The time of one routing decision at 10, 100 and 1,000 simulated nodes, in process.

The kernel's Scorer with every installed signal plugin, no sockets.

    uv run --all-packages python bench/decision.py [--nodes 10 100 1000] [--seconds 4]

Each node has about five models on disk and one or two loaded, a memory reading, and (on half of
them) a capacity report; the model asked for is on 90 % of the nodes, so nearly all of them are
candidates, and latency samples are recorded for it so that the wait-time signal has data. Prints
the median and p99 microseconds per decision, per candidate, and where the time goes (kernel vs
each signal) at the largest size. Numbers, not assertions: compare the rows of one run.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
from collections.abc import Sequence
from typing import Any

from herd_kernel.fleet import Fleet
from herd_kernel.models import Heartbeat, RouteRequest, normalize_model, structure
from herd_kernel.scoring import Decision, Scorer
from herd_kernel.testing import heartbeat_payload, make_config, make_host

GB = 2**30
WANTED = "llama3.2:3b"
# name -> (size on disk in GB, parameter size, training context)
CATALOGUE = {
    "llama3.2:3b": (2.0, "3.2B", 131072), "llama3.1:8b": (4.9, "8.0B", 131072),
    "qwen2.5:7b": (4.7, "7.6B", 32768), "qwen2.5-coder:32b": (19.9, "32.8B", 32768),
    "gemma3:4b": (3.3, "4.3B", 131072), "gemma3:12b": (8.1, "12.2B", 131072),
    "mistral:7b": (4.1, "7.2B", 32768), "phi4:14b": (9.1, "14.7B", 16384),
    "deepseek-r1:8b": (5.2, "8.2B", 131072), "llama3.3:70b": (42.5, "70.6B", 131072),
    "nomic-embed-text:latest": (0.3, "137M", 2048), "qwen3:30b": (18.6, "30.5B", 40960),
}


def model_entries(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A model's /api/tags and /api/ps entries, as the Ollama backend's node side reports them."""
    size_gb, params, context = CATALOGUE[name]
    details = {"format": "gguf", "family": name.split(":")[0], "parameter_size": params,
               "quantization_level": "Q4_K_M"}
    size = int(size_gb * GB)
    available = {"name": name, "size_bytes": size, "details": details, "context_length": context}
    loaded = {"name": name, "size_bytes": size, "size_vram": size, "context_length": 8192,
              "details": details}
    return available, loaded


def heartbeats(node_id: str, rng: random.Random) -> list[dict[str, Any]]:
    """One node's heartbeats, oldest first: a fifth of the nodes had the wanted model loaded a
    moment ago and no longer (warm), so they send two."""
    others = rng.sample([m for m in CATALOGUE if m != WANTED], 5)
    disk = [WANTED, *others[:4]] if rng.random() < 0.9 else others
    # one or two models in memory; the wanted one on about a third of the nodes that have it
    hot = [WANTED] if WANTED in disk and rng.random() < 0.35 else []
    hot += rng.sample([m for m in disk if m not in hot], rng.randint(1, 2) - len(hot))
    memory = rng.choice((16.0, 32.0, 64.0, 128.0))
    extra: dict[str, Any] = {}
    if rng.random() < 0.5:
        extra["extras"] = {"capacity": {"availability_score": rng.random(),
                                        "trend": rng.uniform(-1, 1), "ceiling_gb": memory * 0.75}}

    def beat(loaded: list[str]) -> dict[str, Any]:
        body = heartbeat_payload(
            node_id, memory_gb=memory,
            available=[model_entries(m)[0] for m in disk if m not in loaded],
            loaded=[model_entries(m)[1] for m in loaded], **extra)
        body["memory"]["used_gb"] = round(memory * rng.uniform(0.1, 0.8), 1)
        body["memory"]["available_gb"] = memory - body["memory"]["used_gb"]
        return body

    if WANTED in disk and WANTED not in hot and rng.random() < 0.2:
        return [beat([*hot, WANTED]), beat(hot)]
    return [beat(hot)]


class Timed:
    """A signal wrapped to add up the time its ``score`` takes."""

    def __init__(self, signal: Any) -> None:
        self.signal = signal
        self.name, self.weight = signal.name, signal.weight
        self.low, self.high = signal.low, signal.high
        self.ns = 0

    def score(self, ctx: Any, candidates: Sequence[Any]) -> Sequence[float]:
        started = time.perf_counter_ns()
        values = self.signal.score(ctx, candidates)
        self.ns += time.perf_counter_ns() - started
        return values


def build(n: int, signals: list[Any], config: Any, seed: int) -> tuple[Scorer, int]:
    """A fleet of ``n`` online nodes and its scorer; also how many nodes hold the wanted model."""
    rng = random.Random(seed)
    fleet = Fleet()
    key = normalize_model(WANTED)
    for i in range(n):
        for body in heartbeats(f"node-{i:04d}", rng):
            fleet.apply_heartbeat(structure(body, Heartbeat))
    scorer = Scorer(fleet, signals, config)
    holders = [s.node_id for s in fleet.nodes.values() if key in s.loaded or key in s.available]
    for node_id in holders:  # 20 recent answers each: p75 and time to first token are known
        for _ in range(20):
            scorer.latency.record(node_id, key, rng.uniform(300, 3000), rng.uniform(40, 400))
    return scorer, len(holders)


def time_decisions(scorer: Scorer, request: RouteRequest, seconds: float, cap: int) -> list[int]:
    """Nanoseconds per ``choose``, for about ``seconds`` (at most ``cap`` decisions)."""
    for _ in range(20):  # warm-up
        assert isinstance(scorer.choose(request), Decision)
    gc.collect()
    samples: list[int] = []
    clock = time.perf_counter_ns
    deadline = clock() + int(seconds * 1e9)
    while len(samples) < cap and clock() < deadline:
        started = clock()
        scorer.choose(request)
        samples.append(clock() - started)
    return samples


def main(sizes: list[int], seconds: float, seed: int) -> None:
    host = make_host()
    config = make_config(host)
    signals = host.signals(config)
    request = RouteRequest(model=WANTED, api="ollama", path="/api/chat", stream=True,
                           estimated_tokens=600)
    print(f"signals: {', '.join(s.name for s in signals)}")
    print(f"{'nodes':>6}{'candidates':>12}{'decisions':>11}{'p50 µs':>10}{'p99 µs':>10}"
          f"{'µs/candidate':>14}")
    for n in sizes:
        scorer, holders = build(n, signals, config, seed)
        samples = sorted(time_decisions(scorer, request, seconds, cap=max(200, 50_000 // n)))
        p50 = statistics.median(samples) / 1000
        p99 = samples[min(len(samples) - 1, int(0.99 * len(samples)))] / 1000
        print(f"{n:>6}{holders:>12}{len(samples):>11}{p50:>10.1f}{p99:>10.1f}"
              f"{p50 / holders:>14.2f}")

    n = max(sizes)
    timed = [Timed(s) for s in signals]
    scorer, _ = build(n, timed, config, seed)
    count = max(200, 50_000 // n)
    for _ in range(20):  # warm-up, not counted
        scorer.choose(request)
    for signal in timed:
        signal.ns = 0
    started = time.perf_counter_ns()
    for _ in range(count):
        scorer.choose(request)
    total = time.perf_counter_ns() - started
    spent = sum(s.ns for s in timed)
    print(f"\nwhere the time goes at {n} nodes (mean µs per decision over {count}):")
    print(f"  {'kernel (candidates, totals, pick)':<36}{(total - spent) / count / 1000:>9.1f}")
    for signal in sorted(timed, key=lambda s: -s.ns):
        print(f"  {'signal ' + signal.name:<36}{signal.ns / count / 1000:>9.1f}")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--seconds", type=float, default=4.0, help="timing budget per fleet size")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    main(args.nodes, args.seconds, args.seed)
