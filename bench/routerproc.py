"""The router as the benchmarks run it: a ``herd`` process on a free loopback port with a
throw-away data dir and no discovery, and a way to stop a child process politely."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import tempfile


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def spawn_router(
    stdout: int | None = asyncio.subprocess.DEVNULL,
) -> tuple[str, asyncio.subprocess.Process, dict[str, str]]:
    """Start ``python -m herd_kernel.cli --no-local-node``; its URL, the process, and the
    environment it got (for an agent started beside it)."""
    port = free_port()
    data = tempfile.mkdtemp(prefix="herd-bench-")
    # no discovery: a benchmark has no business announcing anything on the network
    env = {**os.environ, "FLEET_DATA_DIR": data, "FLEET_MDNS": "false"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "herd_kernel.cli", "--host", "127.0.0.1", "--port", str(port),
        "--no-local-node", env=env, stderr=asyncio.subprocess.DEVNULL, stdout=stdout)
    return f"http://127.0.0.1:{port}", proc, env


async def stop_process(proc: asyncio.subprocess.Process, grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace`` seconds."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            proc.kill()
            await proc.wait()
