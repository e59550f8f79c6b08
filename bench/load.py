"""Throughput and memory of the router under load, optionally against the reference, in one run.

32 keep-alive clients send back to back to a fake Ollama (``bench/fastnode.py``), straight and
through a real ``herd`` router with a real ``herd-node`` agent; with ``--reference-venv``, also
through the reference product (ollama-herd 0.11.4, installed by ``bench/reference_venv.sh``) set
up the same way.

    uv run --all-packages python bench/load.py [--duration 10] [--concurrency 32] [--soak N] [--quiet]
    unshare -rn sh -c 'ip link set lo up && uv run --all-packages python bench/load.py --reference-venv /tmp/herd-ref-venv'

Per row: answers per second, p50/p99 latency, errors, and the router's CPU time per answer
(including the work it is still doing once the load stops). Also the router's RSS idle and after the
load and, with ``--soak N``, N more requests through herd with RSS every 10 % and the size of
``latency.db`` and its WAL at the end. The reference announces itself over mDNS, so with
``--reference-venv`` the script refuses to run outside a network namespace that has only ``lo``.

Numbers, not assertions: the machine is shared and noisy, and router, fake and load generator
compete for its cores, so compare the rows of one run, never runs of different days.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from fastnode import MODEL
from loadgen import run_load
from routerproc import free_port, stop_process

HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
WARMUP_S = 1.0
MESSAGES = [{"role": "user", "content": "hi"}]
# (row label, path, body, stream): the same requests through every router
ROUTES = (
    ("/api/chat", "/api/chat",
     {"model": MODEL, "messages": MESSAGES, "stream": False, "options": {"num_predict": 8}}, False),
    ("/v1/chat/completions", "/v1/chat/completions",
     {"model": MODEL, "messages": MESSAGES, "stream": False, "max_tokens": 8}, False),
    ("/api/chat stream", "/api/chat",
     {"model": MODEL, "messages": MESSAGES, "stream": True, "options": {"num_predict": 8}}, True),
)


@dataclass
class Router:
    """A router process, its node agent and where they keep their files."""

    name: str
    url: str
    proc: asyncio.subprocess.Process
    data: Path
    agent: asyncio.subprocess.Process | None = None
    startup_s: float = 0.0
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    memory: dict[str, str] = field(default_factory=dict)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def interfaces() -> list[str]:
    """Network interfaces of this process's namespace (/sys/class/net may show the host's)."""
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    return [line.split(":", 1)[0].strip() for line in lines]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any FLEET_* or OLLAMA_* setting of the user's, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "OLLAMA_"))}
    return {**env, **extra}


async def spawn(argv: list[str], env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as out:  # the child keeps its own descriptor
        return await asyncio.create_subprocess_exec(
            *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out)


async def start_fastnode() -> tuple[str, asyncio.subprocess.Process]:
    """The fake Ollama in a process of its own, so that it has a core to itself when it can."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "fastnode.py"), "--port", "0", stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    return (await proc.stdout.readline()).decode().strip(), proc


async def answered(http: aiohttp.ClientSession, router: Router, path: str,
                   accept: Callable[[Any], bool] = lambda body: True,
                   timeout: float = 60.0) -> float:
    """Seconds until ``path`` answers 200 with a JSON body that ``accept`` likes."""
    started = time.monotonic()
    while time.monotonic() - started < timeout and router.proc.returncode is None:
        try:
            async with http.get(router.url + path) as r:
                if r.status == 200 and accept(await r.json()):
                    return time.monotonic() - started
        except (aiohttp.ClientError, ValueError):
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{router.name}: no good answer on {path}; see {router.data}/router.out")


async def start_router(http: aiohttp.ClientSession, name: str, argv: list[str], env: dict[str, str],
                       data: Path, port: int) -> Router:
    """Spawn a router; its start-up time is from the spawn to the first 200 on /fleet/status."""
    proc = await spawn(argv, env, data / "router.out")
    router = Router(name, f"http://127.0.0.1:{port}", proc, data)
    try:
        router.startup_s = await answered(http, router, "/fleet/status")
    except BaseException:
        await stop_process(router.proc)
        raise
    return router


async def start_herd(http: aiohttp.ClientSession, node_url: str, quiet: bool) -> Router:
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="herd-load-"))
    # no discovery: a benchmark has no business announcing anything on the network
    env = clean_env(FLEET_DATA_DIR=str(data), FLEET_MDNS="false",
                    **({"FLEET_LOG_LEVEL": "WARNING"} if quiet else {}))
    router = await start_router(http, "herd", [
        sys.executable, "-m", "herd_kernel.cli", "--host", "127.0.0.1", "--port", str(port),
        "--no-local-node"], env, data, port)
    router.agent = await spawn(
        [sys.executable, "-m", "herd_node", "--router-url", router.url,
         "--ollama-host", node_url, "--node-id", "bench"],
        {**env, "OLLAMA_NUM_PARALLEL": "8", "FLEET_NODE_LAN_PROXY": "off"}, data / "node.out")
    return router


async def start_reference(http: aiohttp.ClientSession, venv: Path, node_url: str,
                          quiet: bool) -> Router:
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="herd-load-ref-"))
    # HOME too: 0.11.4 writes some state under ~/.fleet-manager whatever its data dir says
    env = clean_env(HOME=str(data), FLEET_DATA_DIR=str(data), FLEET_TELEMETRY="false",
                    **({"FLEET_LOG_LEVEL": "WARNING", "FLEET_CONSOLE_LOG_LEVEL": "WARNING"}
                       if quiet else {}))
    router = await start_router(http, "ref", [
        str(venv / "bin" / "herd"), "--host", "127.0.0.1", "--port", str(port)], env, data, port)
    # the node reads FLEET_NODE_*; OLLAMA_NUM_PARALLEL=8 is its per-model concurrency
    router.agent = await spawn(
        [str(venv / "bin" / "herd-node"), "--node-id", "ref", "--ollama-host", node_url,
         "--router-url", router.url],
        {**env, "FLEET_NODE_DATA_DIR": str(data / "node"), "FLEET_NODE_TELEMETRY": "false",
         "OLLAMA_NUM_PARALLEL": "8"}, data / "node.out")
    return router


def lists_model(body: Any) -> bool:
    return any(m.get("name") == MODEL for m in body.get("models", []))


async def check(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    """One request before the load, so a broken route shows as a message, not only as errors."""
    async with http.post(url, json=body) as r:
        text = await r.text()
        return "ok" if r.status == 200 else f"HTTP {r.status}: {text[:200]}"


async def settle(pid: int, limit: float = 60.0) -> float:
    """Wait until the process uses under 5 % of a core for half a second; the seconds it was
    still busy (in steps of half a second)."""
    started = time.monotonic()
    before = cpu_s(pid)
    while (busy := time.monotonic() - started) < limit:
        await asyncio.sleep(0.5)
        now = cpu_s(pid)
        if now - before < 0.025:
            return busy
        before = now
    return limit


async def measure(url: str, body: dict[str, Any], stream: bool, args: argparse.Namespace,
                  pid: int | None = None) -> dict[str, Any]:
    """One row: a warm-up, then the load; with a router ``pid``, its CPU time per answer counted
    until it is idle again (work deferred past the answer is work the request caused)."""
    raw = json.dumps(body).encode()
    await run_load(url, raw, args.concurrency, WARMUP_S, stream)
    if pid is None:
        return await run_load(url, raw, args.concurrency, args.duration, stream)
    await settle(pid)
    cpu0 = cpu_s(pid)
    result = await run_load(url, raw, args.concurrency, args.duration, stream)
    result["drain_s"] = await settle(pid)
    result["cpu_ms"] = (cpu_s(pid) - cpu0) * 1000 / max(1, result["requests"])
    return result


def row_text(label: str, r: dict[str, Any]) -> str:
    cpu = f"{r['cpu_ms']:>12.2f}{r['drain_s']:>9.1f}" if "cpu_ms" in r else f"{'-':>12}{'-':>9}"
    ttfb = f"{r['ttfb_p50_ms']:>10.2f}" if "ttfb_p50_ms" in r else f"{'-':>10}"
    kinds = f"  {r['error_kinds']}" if r["errors"] else ""
    return (f"{label:<30}{r['rps']:>10.1f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{ttfb}"
            f"{r['errors']:>8}{cpu}{kinds}")


def db_sizes(data: Path) -> str:
    def mb(path: Path) -> str:
        return f"{path.stat().st_size / 2**20:.1f} MB" if path.exists() else "absent"

    return f"latency.db {mb(data / 'latency.db')}, latency.db-wal {mb(data / 'latency.db-wal')}"


async def soak(router: Router, total: int, args: argparse.Namespace) -> None:
    """``total`` /api/chat requests through the router, RSS after every tenth."""
    _, path, body, stream = ROUTES[0]
    raw = json.dumps(body).encode()
    step = max(1, total // 10)
    sent = 0
    print(f"\n{router.name}: soak, {total} requests on {path} at c{args.concurrency}")
    while sent < total:
        n = min(step, total - sent)
        r = await run_load(router.url + path, raw, args.concurrency, float("inf"), stream,
                           requests=n)
        sent += n
        print(f"  {sent:>8} sent  {r['rps']:>8.1f} rps  errors {r['errors']:>5}  "
              f"RSS {rss_mb(router.proc.pid):6.1f} MB")
    drain = await settle(router.proc.pid, 120.0)
    router.memory["after soak"] = f"{rss_mb(router.proc.pid):.1f} MB"
    router.memory["files"] = db_sizes(router.data)
    print(f"  idle again after {drain:.1f} s: RSS {router.memory['after soak']}; "
          f"{router.memory['files']}")


async def bench_router(http: aiohttp.ClientSession, router: Router, args: argparse.Namespace,
                       soak_n: int) -> None:
    ready = await answered(http, router, "/api/tags", lists_model)
    print(f"\n{router.name}: router pid {router.proc.pid} answered /fleet/status "
          f"{router.startup_s:.2f} s after its start; {MODEL} listed {ready:.2f} s after its "
          "agent's start")
    await asyncio.sleep(3.0)  # idle: the node's heartbeats only
    router.memory["idle"] = f"{rss_mb(router.proc.pid):.1f} MB"
    print(f"  RSS idle {router.memory['idle']}")
    for label, path, body, stream in ROUTES:
        status = await check(http, router.url + path, body)
        if status != "ok":
            print(f"  {label}: {status}")
        result = await measure(router.url + path, body, stream, args, router.proc.pid)
        router.results[label] = result
        print("  " + row_text(label, result))
    router.memory["after load"] = f"{rss_mb(router.proc.pid):.1f} MB"
    print(f"  RSS after load {router.memory['after load']}")
    if soak_n:
        await soak(router, soak_n, args)


async def run_router(http: aiohttp.ClientSession, starting: Awaitable[Router],
                     args: argparse.Namespace, soak_n: int = 0) -> Router:
    """Start a router, measure it, stop it; its files are deleted unless something failed."""
    router = await starting
    failed = True
    try:
        await bench_router(http, router, args, soak_n)
        failed = False
    finally:
        for proc in (router.agent, router.proc):
            if proc is not None:
                await stop_process(proc)
        if failed:
            print(f"{router.name}: failed; its logs are kept in {router.data}", file=sys.stderr)
        else:
            shutil.rmtree(router.data, ignore_errors=True)
    return router


def header() -> str:
    return (f"{'row':<30}{'rps':>10}{'p50 ms':>9}{'p99 ms':>9}{'ttfb p50':>10}{'errors':>8}"
            f"{'cpu ms/req':>12}{'drain s':>9}")


def markdown(direct: dict[str, Any], routers: list[Router], args: argparse.Namespace) -> str:
    lines = [
        f"{args.concurrency} concurrent keep-alive clients, {args.duration:g} s per row; "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; "
        f"logging {'WARNING' if args.quiet else 'default'}.",
        "",
        "| target | rps | p50 ms | p99 ms | errors | router CPU ms/request |",
        "|---|---|---|---|---|---|",
        f"| direct fake `/api/chat` | {direct['rps']:.0f} | {direct['p50_ms']:.2f} | "
        f"{direct['p99_ms']:.2f} | {direct['errors']} | - |",
    ]
    for router in routers:
        for label, r in router.results.items():
            lines.append(f"| {router.name} `{label}` | {r['rps']:.1f} | {r['p50_ms']:.2f} | "
                         f"{r['p99_ms']:.2f} | {r['errors']} | {r['cpu_ms']:.2f} |")
    lines += ["", "| router | start-up | RSS idle | RSS after load | RSS after soak | "
              "files after soak |", "|---|---|---|---|---|---|"]
    for router in routers:
        cells = [f"{router.startup_s:.2f} s",
                 *(router.memory.get(k, "-")
                   for k in ("idle", "after load", "after soak", "files"))]
        lines.append(f"| {router.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    node_url, node = await start_fastnode()
    routers: list[Router] = []
    try:
        async with aiohttp.ClientSession() as http:
            print(f"fake Ollama at {node_url}; c{args.concurrency}, {args.duration:g} s per row "
                  f"after {WARMUP_S:g} s of warm-up; rps counts successful answers")
            print(header())
            _, path, body, stream = ROUTES[0]
            direct = await measure(node_url + path, body, stream, args)
            print(row_text("direct /api/chat", direct))
            # one router at a time: neither eats the other's CPU
            routers.append(await run_router(http, start_herd(http, node_url, args.quiet), args,
                                            args.soak))
            if args.reference_venv:
                routers.append(await run_router(
                    http, start_reference(http, args.reference_venv, node_url, args.quiet), args))
    finally:
        await stop_process(node)
    if len(routers) == 2:
        herd, ref = routers
        print("\nherd / ref (rps above 1 and latency or CPU below 1 favour herd)")
        for label, h in herd.results.items():
            r = ref.results[label]
            print(f"  {label:<24} rps x{h['rps'] / r['rps']:.2f}"
                  f"  p50 x{h['p50_ms'] / r['p50_ms']:.3f}  p99 x{h['p99_ms'] / r['p99_ms']:.3f}"
                  f"  cpu/req x{h['cpu_ms'] / r['cpu_ms']:.3f}")
    print("\n" + markdown(direct, routers, args))


def namespace_problem(argv: list[str]) -> str | None:
    """Why the reference must not start here, with the command that runs it safely, or None."""
    found = interfaces()
    if found == ["lo"]:
        return None
    args = shlex.join(["bench/load.py", *argv])
    return (f"--reference-venv: the reference announces itself over mDNS, so it runs only in a "
            f"network namespace whose only interface is lo (here: {', '.join(found)}). From the "
            f"repository root, with the workspace synced (there is no network inside):\n\n"
            f"  unshare -rn sh -c 'ip link set lo up && uv run --all-packages python {args}'\n"
            f"  unshare -rn sh -c 'ip link set lo up && .venv/bin/python {args}'   (the same)\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per row")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--soak", type=int, default=0, metavar="N",
                        help="then N more /api/chat requests through herd, RSS every 10 %% "
                        "(the issue asks for 100000)")
    parser.add_argument("--quiet", action="store_true",
                        help="routers log at WARNING (the reference's 'quiet' rows)")
    parser.add_argument("--reference-venv", type=Path, metavar="PATH",
                        help="also run ollama-herd from this venv (bench/reference_venv.sh)")
    args = parser.parse_args()
    if args.reference_venv:
        if not (args.reference_venv / "bin" / "herd").exists():
            sys.exit(f"no {args.reference_venv}/bin/herd: create it with "
                     f"sh bench/reference_venv.sh {args.reference_venv}")
        if problem := namespace_problem(sys.argv[1:]):
            sys.exit(problem)
    asyncio.run(main(args))
