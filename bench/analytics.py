"""The analytics APIs on a year of history: a year of generated traces (a few thousand requests
a day across nodes, models and apps) is written into a temporary ``latency.db`` through the
store's own writer (the same batches and roll-ups as a running router), then a real router with
the analytics plugin answers each API several times over HTTP.

    uv run --all-packages python bench/analytics.py [--days 365] [--per-day 3000] [--calls 7]
        [--keep DIR]   # write the history into DIR once, and reuse it on the next runs

Prints how long the year took to write, the database's size, and the median and slowest time of
each API call, in milliseconds. Numbers, not assertions: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from herd_analytics.store import TraceStore

from herd_kernel.app import create_app, serve
from herd_kernel.models import Attempt, Trace
from herd_kernel.testing import make_config, make_host

NODES = ("mac-studio", "macbook-pro", "mini-1", "mini-2", "linux-4090")
# model -> (median latency ms, tokens per second)
MODELS = {"llama3.3:70b": (9000.0, 12.0), "qwen2.5:32b": (5200.0, 22.0),
          "qwen3:8b": (1800.0, 55.0), "llama3.2:3b": (700.0, 110.0),
          "deepseek-r1:14b": (14000.0, 35.0), "nomic-embed-text": (60.0, 0.0)}
TAGS = (("aider",), ("continue",), ("open-webui",), ("batch", "nightly"), ("team-a", "aider"), ())


def fake_trace(rng: random.Random, i: int, timestamp: float) -> Trace:
    model = rng.choices(list(MODELS), weights=(1, 2, 4, 5, 1, 3))[0]
    median, speed = MODELS[model]
    latency = median * math.exp(rng.gauss(0, 0.5))
    roll = rng.random()
    status = ("completed" if roll < 0.97 else "failed" if roll < 0.985
              else "client_disconnected" if roll < 0.995 else "rejected")
    retries = 1 if rng.random() < 0.02 else 0
    node = rng.choice(NODES) if status != "rejected" else None
    fallback = rng.random() < 0.01
    completion = int(latency / 1000 * speed) if speed else 0
    return Trace(
        request_id=f"bench-{i}", timestamp=timestamp, model="llama3.2:3b" if fallback else model,
        original_model=model, api=rng.choice(("ollama", "openai")), path="/api/chat",
        node_id=node, status=status, http_status=200 if status == "completed" else 502,
        latency_ms=latency, ttft_ms=latency * 0.1 if speed else None,
        prompt_tokens=rng.randint(20, 3000), completion_tokens=completion, retries=retries,
        score=rng.uniform(40, 120), score_breakdown={"thermal": 50.0, "queue_depth": -3.0},
        attempts=tuple(Attempt(node_id=n, outcome="HTTP 500", status=500)
                       for n in rng.sample(NODES, retries)) + ((Attempt(
                           node_id=node, outcome="ok", status=200),) if node else ()),
        tags=rng.choice(TAGS), error_message=None if status == "completed" else "node failed",
        stream=rng.random() < 0.7)


async def generate(path: Path, days: int, per_day: int, seed: int = 1) -> tuple[int, float]:
    """Write ``days`` of history ending now through the store's writer; rows and seconds."""
    rng = random.Random(seed)
    store = TraceStore(path, retention_days=0, rollup_retention_days=0)
    await store.open()
    started = time.perf_counter()
    now = time.time()
    start = now - days * 86400
    total = days * per_day
    for i in range(total):
        # more traffic in the working hours of the day
        t = start + (i + rng.random()) * (now - start) / total
        if rng.random() < 0.4 and 8 <= (t % 86400) / 3600 <= 18:
            t += rng.uniform(-1800, 1800)
        while store.queue.full():
            await asyncio.sleep(0.001)
        store.submit(fake_trace(rng, i, min(t, now)))
        if i % 20_000 == 0 and i:
            print(f"  {i:>9,} traces written ({i / (time.perf_counter() - started):,.0f}/s)",
                  file=sys.stderr)
    await store.flush()
    seconds = time.perf_counter() - started
    await store.close()
    return total, seconds


CALLS = [
    "/dashboard/api/traces?limit=50",
    "/dashboard/api/traces?limit=1000",
    "/dashboard/api/usage",
    "/dashboard/api/usage?days=30",
    "/dashboard/api/models",
    "/dashboard/api/models?days=365",
    "/dashboard/api/apps",
    "/dashboard/api/apps?days=365",
    "/dashboard/api/apps/daily?days=30",
    "/dashboard/api/trends",
    "/dashboard/api/trends?hours=24",
    "/dashboard/api/trends?hours=168",
    "/dashboard/api/trends?days=30",
]


async def measure(data_dir: Path, calls: int) -> None:
    host = make_host("analytics")
    config = make_config(host, {"FLEET_DATA_DIR": str(data_dir), "FLEET_TRACE_RETENTION_DAYS": "0",
                                "FLEET_ROLLUP_RETENTION_DAYS": "0"})
    app = create_app(config, host)
    opened = time.perf_counter()
    runner, site = await serve(app, "127.0.0.1", 0)
    print(f"router start with this database: {(time.perf_counter() - opened) * 1000:.0f} ms")
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as http:
            print(f"{'call':<42}{'median ms':>10}{'max ms':>9}{'bytes':>10}")
            for call in CALLS:
                times, size = [], 0
                for _ in range(calls):
                    t0 = time.perf_counter()
                    async with http.get(f"http://127.0.0.1:{port}{call}") as response:
                        body = await response.read()
                        assert response.status == 200, (call, response.status, body[:200])
                    times.append((time.perf_counter() - t0) * 1000)
                    size = len(body)
                print(f"{call:<42}{statistics.median(times):>10.1f}{max(times):>9.1f}{size:>10,}")
    finally:
        await runner.cleanup()


async def main(days: int, per_day: int, calls: int, keep: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="herd-analytics-bench-") as tmp:
        data_dir = Path(keep or tmp)
        path = data_dir / "latency.db"
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            print(f"writing {days} days x {per_day:,} requests through the store's writer ...")
            rows, seconds = await generate(path, days, per_day)
            print(f"{rows:,} traces in {seconds:.1f} s ({rows / seconds:,.0f} traces/s, "
                  "roll-ups included)")
        size = sum(f.stat().st_size for f in data_dir.glob("latency.db*"))
        print(f"latency.db: {size / 1e6:.0f} MB")
        await measure(data_dir, calls)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--per-day", type=int, default=3000)
    parser.add_argument("--calls", type=int, default=7, help="calls per API (the median is shown)")
    parser.add_argument("--keep", help="a directory for the history, written once and reused")
    args = parser.parse_args()
    asyncio.run(main(args.days, args.per_day, args.calls, args.keep))
