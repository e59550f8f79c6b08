"""Backpressure, measured as memory: one client that reads 2 KB every 100 ms from a node that
streams as fast as the socket takes it, through a real ``herd`` process; the router's RSS is
sampled every second.

    uv run --all-packages python bench/slow_reader.py [--seconds 10]
    uv run --all-packages python bench/slow_reader.py --stream-no-newline
    uv run --all-packages python bench/slow_reader.py --huge-whole

Modes (the fake node is ``bench/fastnode.py --flood``):

- default: ``/api/chat`` streamed as NDJSON lines of about 1 KB, for as long as the run lasts;
- ``--stream-no-newline``: one streamed line that never ends (no newline to cut frames at);
- ``--huge-whole``: ``"stream": false`` and one JSON object announced with a Content-Length of 2 GB.

Prints seconds, router RSS in MB and the bytes the client has read, then the growth over the RSS
before the request (the target: under 50 MB). A router that relays with backpressure holds a few
socket buffers; one that reads the node regardless holds what the client has not read yet.

Stops by itself after ``--seconds`` (or when RSS passes ``--max-rss-mb``, to spare a shared
machine), kills only the router it started, and sends traffic only to 127.0.0.1. The router runs
as ``python -m herd_kernel.cli`` of this interpreter (not ``uv run herd``), so the PID sampled is
the router's own; a heartbeat every 2 s stands in for a node agent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from pathlib import Path

import aiohttp

from herd_kernel.testing import heartbeat_payload

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fastnode import MODEL, start_fastnode
from routerproc import spawn_router, stop_process

READ_BYTES = 2048
READ_EVERY_S = 0.1
RCVBUF = 4096
TARGET_MB = 50


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB (Linux /proc, else psutil)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


async def heartbeats(router: str, node_url: str) -> None:
    """Keep the fake node registered as the one node with the model loaded."""
    beat = heartbeat_payload("flood", url=node_url, loaded=[MODEL])
    async with aiohttp.ClientSession() as http:
        while True:
            beat["timestamp"] = time.time()
            try:
                async with http.post(f"{router}/heartbeat", json=beat) as r:
                    await r.read()
            except aiohttp.ClientError:
                pass  # not listening yet
            await asyncio.sleep(2.0)


async def wait_until_routable(router: str, deadline_s: float = 30.0) -> None:
    until = time.monotonic() + deadline_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < until:
            try:
                async with http.get(f"{router}/api/tags") as r:
                    if r.status == 200 and (await r.json()).get("models"):
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit("the router did not list the fake node's model in time")


async def slow_client(port: int, body: bytes, read: list[int], stop: asyncio.Event) -> None:
    """A raw socket with a small receive buffer that reads READ_BYTES every READ_EVERY_S."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)  # before connect: sets the window
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                b"Content-Type: application/json\r\nContent-Length: "
                                + str(len(body)).encode() + b"\r\n\r\n" + body)
        while not stop.is_set():
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, READ_BYTES), READ_EVERY_S * 10)
            except TimeoutError:
                continue
            if not data:
                return  # the router ended the answer
            read[0] += len(data)
            await asyncio.sleep(READ_EVERY_S)
    finally:
        sock.close()


async def run(mode: str, seconds: float, max_rss_mb: float) -> float:
    node_url, close_node = await start_fastnode(0, flood=mode, flood_seconds=seconds + 30)
    router, proc, _env = await spawn_router()
    port = int(router.rsplit(":", 1)[1])
    beating = asyncio.create_task(heartbeats(router, node_url))
    stop = asyncio.Event()
    read = [0]
    client: asyncio.Task[None] | None = None
    try:
        await wait_until_routable(router)
        await asyncio.sleep(1.0)  # let start-up allocations settle before the baseline
        baseline = rss_mb(proc.pid)
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                           "stream": mode != "huge-whole"}).encode()
        print(f"mode {mode}: a client reading {READ_BYTES} B every {READ_EVERY_S * 1000:.0f} ms "
              f"(SO_RCVBUF {RCVBUF}), router pid {proc.pid}")
        print(f"{'s':>4}{'RSS MB':>10}{'client read':>14}")
        print(f"{0:>4}{baseline:>10.1f}{0:>14,}")
        client = asyncio.create_task(slow_client(port, body, read, stop))
        started = time.monotonic()
        peak = baseline
        second = 0
        while second < seconds:
            second += 1
            await asyncio.sleep(max(0.0, started + second - time.monotonic()))
            rss = rss_mb(proc.pid)
            peak = max(peak, rss)
            note = "  (client done)" if client.done() else ""
            if rss > max_rss_mb:
                note = f"  (over --max-rss-mb {max_rss_mb:g}: stopping early)"
            print(f"{second:>4}{rss:>10.1f}{read[0]:>14,}{note}")
            if rss > max_rss_mb:
                break
        growth = peak - baseline
        verdict = "within" if growth < TARGET_MB else "OVER"
        print(f"growth: {growth:.1f} MB (peak {peak:.1f} MB over a {baseline:.1f} MB baseline), "
              f"{verdict} the {TARGET_MB} MB target; the client read {read[0]:,} B")
        return growth
    finally:
        stop.set()
        if client is not None:
            client.cancel()
            await asyncio.gather(client, return_exceptions=True)
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)
        await stop_process(proc, 10)
        await close_node()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--stream-no-newline", action="store_true",
                       help="the node streams one endless line with no newline")
    which.add_argument("--huge-whole", action="store_true",
                       help="a non-streamed answer announced with a Content-Length of 2 GB")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the client reads")
    parser.add_argument("--max-rss-mb", type=float, default=2048.0,
                        help="stop early when the router's RSS passes this")
    args = parser.parse_args()
    mode = "no-newline" if args.stream_no_newline else "huge-whole" if args.huge_whole else "lines"
    asyncio.run(run(mode, args.seconds, args.max_rss_mb))
