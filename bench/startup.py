"""Start-up: the installed ``herd`` command, from the spawn to its first answers.

Each round spawns ``herd --no-local-node`` (every installed plugin, discovery off) and, at the
same moment, a ``herd-node`` in front of a simulated Ollama started beforehand, then measures:

- ``status``: the spawn to the first 200 on ``/fleet/status`` (the router serves);
- ``first chat``: the spawn to the first 200 on ``/api/chat`` for the node's model (the router
  serves, the node has reported, and a request went through it).

It prints the median and the spread of ``--rounds`` rounds, and the router's idle RSS after the
first answer. Run it in each tree to compare, e.g.:

    uv run --all-packages python bench/startup.py --rounds 7
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from routerproc import free_port, stop_process  # noqa: E402

from herd_sim import PROFILES, SimNode  # noqa: E402

BIN = Path(sys.executable).parent


async def first_ok(http: aiohttp.ClientSession, method: str, url: str, started: float,
                   timeout: float = 30.0, **kw: object) -> float:
    while True:
        try:
            async with http.request(method, url, **kw) as r:
                await r.read()
                if r.status == 200:
                    return time.perf_counter() - started
        except aiohttp.ClientError:
            pass
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"{url} did not answer within {timeout} s")
        await asyncio.sleep(0.005)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one_round(node: SimNode, model: str) -> tuple[float, float, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data = tempfile.mkdtemp(prefix="herd-startup-")
    env = {**os.environ, "FLEET_DATA_DIR": data, "FLEET_MDNS": "false",
           "FLEET_NODE_HEARTBEAT_INTERVAL": "5", "FLEET_NODE_DATA_DIR": data}
    quiet = asyncio.subprocess.DEVNULL
    started = time.perf_counter()
    router = await asyncio.create_subprocess_exec(
        str(BIN / "herd"), "--host", "127.0.0.1", "--port", str(port), "--no-local-node",
        env=env, stdout=quiet, stderr=quiet)
    agent = await asyncio.create_subprocess_exec(
        str(BIN / "herd-node"), "--router-url", url, "--ollama-host", node.url,
        "--node-id", "bench", env=env, stdout=quiet, stderr=quiet)
    try:
        async with aiohttp.ClientSession() as http:
            status = await first_ok(http, "GET", f"{url}/fleet/status", started)
            body = {"model": model, "stream": False, "options": {"num_predict": 2},
                    "messages": [{"role": "user", "content": "hi"}]}
            chat = await first_ok(http, "POST", f"{url}/api/chat", started, json=body)
            await asyncio.sleep(1.0)
            rss = rss_mb(router.pid)
        return status, chat, rss
    finally:
        await stop_process(agent)
        await stop_process(router)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    node = SimNode(PROFILES["small"], time_scale=0.01)
    await node.start()
    model = node.profile.preloaded[0] if getattr(node.profile, "preloaded", None) else None
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{node.url}/api/tags") as r:
                tags = (await r.json())["models"]
        model = model or next(m["name"] for m in tags
                              if "embedding" not in m.get("capabilities", []))
        rounds = [await one_round(node, model) for _ in range(args.rounds)]
    finally:
        await node.stop()
    status = [r[0] for r in rounds]
    chat = [r[1] for r in rounds]
    rss = [r[2] for r in rounds]
    print(f"herd at {BIN}, {args.rounds} rounds, model {model}")
    print(f"  spawn -> /fleet/status 200: median {statistics.median(status):.3f} s "
          f"(min {min(status):.3f}, max {max(status):.3f})")
    print(f"  spawn -> first chat 200 through the node: median {statistics.median(chat):.3f} s "
          f"(min {min(chat):.3f}, max {max(chat):.3f})")
    print(f"  router RSS 1 s after: median {statistics.median(rss):.1f} MB")


if __name__ == "__main__":
    asyncio.run(main())
