"""The ``herd-sim`` command: start a simulated fleet, optionally with one Herd node agent per
simulated node, and run until SIGINT/SIGTERM.

    herd-sim --profiles large,medium,small --time-scale 0.1
    herd-sim --nodes 6 --router-url http://127.0.0.1:11435 --agent-arg=--heartbeat-interval=1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import IO

import attrs

from herd_sim.catalogue import PROFILES, NodeProfile
from herd_sim.fleet import SimFleet

__all__ = ["agent_command", "agent_env", "build_parser", "fleet_profiles", "main", "run"]

AGENT_MODULE = "herd_node"
Spawn = Callable[[list[str], dict[str, str]], Awaitable[asyncio.subprocess.Process]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="herd-sim",
        description="Simulated Ollama nodes (one port each) for trying and testing Herd.")
    parser.add_argument("--nodes", type=int, default=None,
                        help="number of nodes (default: one per profile); profiles are cycled")
    parser.add_argument("--profiles", default="large,medium,small",
                        help=f"comma-separated profiles, from: {', '.join(PROFILES)}")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--base-port", type=int, default=0,
                        help="first port (node i gets base+i); 0 picks free ports")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="multiplies simulated durations (0.1 = ten times faster, 0 = instant)")
    parser.add_argument("--router-url", default=None,
                        help="also start a Herd node agent per node, reporting to this router")
    parser.add_argument("--agent-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for every agent (repeatable; write "
                             "--agent-arg=--flag=value for values starting with -)")
    return parser


def _plan(profile_names: Sequence[str], nodes: int | None) -> list[tuple[str, NodeProfile]]:
    unknown = [n for n in profile_names if n not in PROFILES]
    if unknown or not profile_names:
        raise ValueError(f"unknown profile(s): {', '.join(unknown) or '(none)'}; "
                         f"choose from {', '.join(PROFILES)}")
    count = len(profile_names) if nodes is None else nodes
    if count < 1:
        raise ValueError("--nodes must be at least 1")
    out = []
    seen: dict[str, int] = {}
    for i in range(count):
        base = PROFILES[profile_names[i % len(profile_names)]]
        seen[base.name] = seen.get(base.name, 0) + 1
        suffix = "" if seen[base.name] == 1 else f"-{seen[base.name]}"
        out.append((base.name, attrs.evolve(base, name=f"sim-{base.name}{suffix}")))
    return out


def fleet_profiles(profile_names: Sequence[str], nodes: int | None = None) -> list[NodeProfile]:
    """One profile per node, named ``sim-<profile>`` (``sim-<profile>-2`` when it repeats);
    ``nodes`` (default: one per name) cycles through ``profile_names``."""
    return [profile for _base, profile in _plan(profile_names, nodes)]


def agent_command(router_url: str, node_url: str, node_id: str,
                  extra: Sequence[str] = ()) -> list[str]:
    """The command line of the node agent started for one simulated node."""
    return [sys.executable, "-m", AGENT_MODULE, "--router-url", router_url,
            "--ollama-host", node_url, "--node-id", node_id, *extra]


def agent_env(base: Mapping[str, str]) -> dict[str, str]:
    """The agent's environment: ours plus ``FLEET_NODE_SIM_HARDWARE=1`` (the agent then reports
    the simulated machine from ``/_sim/hardware`` instead of the real one)."""
    return {**base, "FLEET_NODE_SIM_HARDWARE": "1"}


async def _spawn(command: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(*command, env=env)


async def _terminate(proc: asyncio.subprocess.Process, grace: float = 10.0) -> None:
    if proc.returncode is not None:
        return
    try:
        proc.terminate()
    except ProcessLookupError:
        return
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def run(args: argparse.Namespace, *, stop: asyncio.Event | None = None,
              spawn: Spawn = _spawn, out: IO[str] | None = None) -> int:
    """Run the fleet until ``stop`` is set (by default: SIGINT or SIGTERM)."""
    out = out or sys.stdout
    plan = _plan([p.strip() for p in args.profiles.split(",") if p.strip()], args.nodes)
    profiles = [profile for _base, profile in plan]
    base_of = {profile.name: base for base, profile in plan}
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread, or Windows: the caller sets ``stop``
    fleet = SimFleet(profiles, host=args.host, time_scale=args.time_scale,
                     base_port=args.base_port)
    children: list[asyncio.subprocess.Process] = []
    watchers: list[asyncio.Task[None]] = []
    await fleet.start()
    try:
        for name, node in fleet.nodes.items():
            loaded = ",".join(m for m, _ctx, _exp in node.loaded_models()) or "-"
            print(f"{name}\t{node.url}\tprofile={base_of[name]}\tloaded={loaded}",
                  file=out, flush=True)
        if args.router_url:
            env = agent_env(os.environ)
            for name, node in fleet.nodes.items():
                # the agent reports the simulated OLLAMA_NUM_PARALLEL, as a real one would
                node_env = {**env, "FLEET_NODE_OLLAMA_NUM_PARALLEL": str(node.profile.num_parallel)}
                proc = await spawn(agent_command(args.router_url, node.url, name,
                                                 args.agent_arg), node_env)
                children.append(proc)
                watchers.append(loop.create_task(_watch(proc, name, stop)))
        print(f"herd-sim: {len(fleet.nodes)} node(s) running"
              f"{f', {len(children)} agent(s)' if children else ''}; Ctrl-C stops",
              file=sys.stderr, flush=True)
        await stop.wait()
    finally:
        for task in watchers:
            task.cancel()
        # only the processes this command started, each by its own handle
        await asyncio.gather(*(_terminate(p) for p in children))
        await fleet.stop()
        for sig in handled:
            loop.remove_signal_handler(sig)
    return 0


async def _watch(proc: asyncio.subprocess.Process, name: str, stop: asyncio.Event) -> None:
    code = await proc.wait()
    if not stop.is_set():
        print(f"herd-sim: the agent for {name} exited with code {code}", file=sys.stderr,
              flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        fleet_profiles([p.strip() for p in args.profiles.split(",") if p.strip()], args.nodes)
    except ValueError as err:
        parser.error(str(err))
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130
