"""Added latency of the router: the same requests sent straight to a simulated Ollama node and
through a real ``herd`` process (default settings) in front of it, side by side in one run.

    uv run --all-packages python bench/overhead.py [--requests 500] [--key K]

``--key K`` starts the router with ``FLEET_API_KEYS=K`` and sends it with every request (both
paths), to measure what the client-key check adds.

Prints p50/p99 per path in milliseconds and the difference. Numbers, not assertions: this
machine is shared and noisy, so compare the columns of one run, never runs of different days.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

import aiohttp
from herd_sim import PROFILES, SimNode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fastnode import start_fastnode  # noqa: E402
from routerproc import spawn_router, stop_process  # noqa: E402

MODEL = "llama3.2:3b"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


HEADERS: dict[str, str] = {}


async def timed(http: aiohttp.ClientSession, url: str, body: dict, stream: bool) -> tuple[float, float]:
    """Total and time-to-first-byte of one request, in ms."""
    t0 = time.perf_counter()
    async with http.post(url, json=body, headers=HEADERS) as response:
        first = None
        async for _chunk in response.content.iter_any():
            if first is None:
                first = time.perf_counter()
        assert response.status == 200, response.status
    end = time.perf_counter()
    return (end - t0) * 1000, ((first or end) - t0) * 1000


async def series(http, base: str, stream: bool, n: int, warmup: int) -> tuple[list[float], list[float]]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream,
            "options": {"num_predict": 8}}
    totals, firsts = [], []
    for i in range(n + warmup):
        total, first = await timed(http, f"{base}/api/chat", body, stream)
        if i >= warmup:
            totals.append(total)
            firsts.append(first)
    return totals, firsts


async def main(n: int, fake: str) -> None:
    if fake == "fastnode":  # a raw-asyncio fake with canned answers: the node costs ~nothing
        node_url, close_node = await start_fastnode(0)
    else:  # herd-sim answering instantly: a full Ollama emulation, itself an aiohttp server
        node = SimNode(PROFILES["medium"], time_scale=0.0)
        await node.start()
        node_url, close_node = node.url, node.stop
    router, proc, env = await spawn_router(stdout=None)
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "herd_node", "--router-url", router, "--ollama-host", node_url,
        "--node-id", "bench", env=env, stderr=asyncio.subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(f"{router}/api/tags", headers=HEADERS) as r:
                        if (await r.json())["models"]:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            print(f"{n} sequential /api/chat requests per row (after 50 warm-ups), times in ms")
            print(f"{'path':<34}{'p50':>8}{'p99':>8}{'ttfb p50':>10}")
            results = {}
            for stream in (False, True):
                for label, base in (("direct", node_url), ("via herd", router)):
                    totals, firsts = await series(http, base, stream, n, 50)
                    results[(stream, label)] = totals, firsts
                    name = f"{label} {'stream' if stream else 'non-stream'}"
                    print(f"{name:<34}{statistics.median(totals):>8.2f}{pct(totals, 0.99):>8.2f}"
                          f"{statistics.median(firsts):>10.2f}")
            for stream in (False, True):
                direct, via = results[(stream, "direct")], results[(stream, "via herd")]
                kind = "stream" if stream else "non-stream"
                print(f"added by herd, {kind:<11}  p50 {statistics.median(via[0]) - statistics.median(direct[0]):+.2f}"
                      f"  p99 {pct(via[0], .99) - pct(direct[0], .99):+.2f}"
                      f"  ttfb p50 {statistics.median(via[1]) - statistics.median(direct[1]):+.2f}")
    finally:
        for p in (agent, proc):
            await stop_process(p)
        await close_node()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--node", choices=("fastnode", "herd-sim"), default="fastnode",
                        help="the fake Ollama behind the router (default: fastnode)")
    parser.add_argument("--key", default="", help="a client API key the router requires")
    args = parser.parse_args()
    if args.key:
        os.environ["FLEET_API_KEYS"] = args.key
        HEADERS["Authorization"] = f"Bearer {args.key}"
    asyncio.run(main(args.requests, args.node))
