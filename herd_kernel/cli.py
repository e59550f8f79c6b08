"""The router's command line: ``herd`` (the router, ``herd plugins``, ``herd settings``, ``herd
nodes``, ``herd enroll``, ``herd --demo``). ``herd-node`` is ``herd_node.cli``.

Flags keep the reference's names (``--host``, ``--port``, ``--ollama-host``) so existing scripts
work. Flags override ``FLEET_*`` variables, which override defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

from herd_kernel import __version__
from herd_kernel.config import (
    ROUTER_SETTINGS,
    Config,
    RuntimeSettings,
    Setting,
    SettingError,
    resolve,
)
from herd_kernel.launch import (
    add_setting_flags,
    load,
    on_signals,
    report_plugins,
    run_loop,
    setting_flags,
    with_plugin_flags,
)
from herd_kernel.logs import setup_logging
from herd_kernel.plugins import PluginError, PluginHost

if TYPE_CHECKING:
    from herd_kernel.api import DemoFleet

log = structlog.get_logger("herd.cli")

def _agent_settings() -> tuple[Setting, ...]:
    """The node agent's settings: the router runs agents in its own process (for a local engine
    and for ``--demo``), so it reads them too. Imported when a command runs, never with the
    kernel."""
    from herd_node.settings import NODE_SETTINGS

    return NODE_SETTINGS


# --- herd ---------------------------------------------------------------------------------------


def _router_parser(commands: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="herd", description="Herd router: one URL for every AI engine in the house."
    )
    parser.add_argument("--version", "-V", action="version", version=f"herd {__version__}")
    parser.add_argument("--host", help="listen address (FLEET_HOST, default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="listen port (FLEET_PORT, default 11435)")
    parser.add_argument("--plugins", help="plugins to load, names or globs, comma-separated")
    parser.add_argument("--data-dir", help="data directory (FLEET_DATA_DIR)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (FLEET_LOG_LEVEL)")
    parser.add_argument("--secret", help="fleet secret nodes must sign heartbeats with (FLEET_SECRET)")
    parser.add_argument("--no-local-node", action="store_true",
                        help="do not start a node agent for the engines on this machine")
    add_setting_flags(parser, _agent_settings())  # e.g. where this machine's engine listens
    parser.add_argument("--demo", action="store_true",
                        help="also start a simulated fleet (herd-sim) with a node agent each")
    parser.add_argument("--demo-nodes", type=int, default=3, help="simulated nodes for --demo")
    if not commands:  # the options alone: read before the plugins (and their flags) are known
        return parser
    sub = parser.add_subparsers(dest="command")
    plugins = sub.add_parser("plugins", help="list installed plugins and what each registers")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.add_argument("--plugins", dest="plugins_sub", help="only these plugins")
    settings = sub.add_parser("settings", help="every FLEET_ / FLEET_NODE_ setting, with its value")
    settings.add_argument("--markdown", action="store_true",
                          help="print the reference table (docs/configuration.md) instead")
    router = argparse.ArgumentParser(add_help=False)
    router.add_argument("--router", default=argparse.SUPPRESS,
                        help="the running router (default http://127.0.0.1:FLEET_PORT); "
                        "from another machine set FLEET_ADMIN_KEY")
    nodes = sub.add_parser("nodes", parents=[router],
                           help="list nodes with their admission; approve or remove one")
    nodes.add_argument("--json", action="store_true", dest="nodes_json",
                       help="machine-readable output")
    nodes_sub = nodes.add_subparsers(dest="nodes_command")
    approve = nodes_sub.add_parser("approve", parents=[router], help="admit a pending node")
    approve.add_argument("node_id")
    approve.add_argument("--fingerprint", help="admit only if its key has this fingerprint")
    remove = nodes_sub.add_parser("remove", parents=[router],
                                  help="revoke a node: forget its key; it must be admitted again")
    remove.add_argument("node_id")
    enroll = sub.add_parser("enroll", parents=[router],
                            help="admit new nodes without approval for a few minutes")
    enroll.add_argument("--minutes", type=float, default=None,
                        help="how long the window stays open (default FLEET_ENROLL_MINUTES or 10; "
                        "0 closes it)")
    return parser


def herd_main(argv: Sequence[str] | None = None) -> int:
    parser = _router_parser()
    # plugins declare flags too (``Setting.flag``, e.g. an engine's URL for the built-in agent):
    # the options known without them first, then everything, strictly, once they are loaded
    early, _rest = _router_parser(commands=False).parse_known_args(argv)
    flags = {
        **setting_flags(early, _agent_settings()),
        "FLEET_HOST": early.host,
        "FLEET_PORT": early.port,
        "FLEET_PLUGINS": early.plugins,  # also `herd plugins --plugins X`
        "FLEET_DATA_DIR": early.data_dir,
        "FLEET_LOG_LEVEL": early.log_level,
        "FLEET_SECRET": early.secret,
    }
    if early.demo and early.host is None and "FLEET_HOST" not in os.environ:
        flags["FLEET_HOST"] = "127.0.0.1"  # a demo has no business on the LAN
    try:
        host, config = load((*ROUTER_SETTINGS, *_agent_settings()), flags, "FLEET_PLUGINS")
        args, config = with_plugin_flags(parser, argv, host, config)
    except (SettingError, PluginError) as exc:
        print(f"herd: {exc}", file=sys.stderr)
        return 2
    if args.command in ("nodes", "enroll"):
        return _admin_command(args, flags)
    if args.command == "plugins":
        return _plugins_command(host, config, as_json=args.json)
    if args.command == "settings":
        if args.markdown:  # the reference page: what the code and environment say
            print(settings_markdown(config), end="")
        else:  # what a router started now would run with, changes kept in the data dir included
            RuntimeSettings(config, Path(config["FLEET_DATA_DIR"]) / "settings.json").load(
                announce=False)
            print(_settings_text(config), end="")
        return 0
    try:
        demo = _demo_fleet(host, config) if args.demo else None
    except (PluginError, RuntimeError) as exc:
        print(f"herd: {exc}", file=sys.stderr)
        return 2
    setup_logging(config["FLEET_LOG_LEVEL"], config["FLEET_DATA_DIR"])
    report_plugins(host, "herd")
    try:
        return run_loop(_serve_router(host, config, args, demo), config["FLEET_UVLOOP"])
    except KeyboardInterrupt:
        return 0
    except (PluginError, SettingError, OSError, RuntimeError) as exc:
        print(f"herd: {exc}", file=sys.stderr)
        return 1


def _admin_command(args: argparse.Namespace, flags: dict[str, Any]) -> int:
    """``herd nodes [approve|remove ID]`` and ``herd enroll``: calls to the running router."""
    try:
        config = resolve(ROUTER_SETTINGS, os.environ, flags)
    except SettingError as exc:
        print(f"herd: {exc}", file=sys.stderr)
        return 2
    base = getattr(args, "router", None) or f"http://127.0.0.1:{config['FLEET_PORT']}"
    base = base.rstrip("/")
    key = config["FLEET_ADMIN_KEY"]
    command = args.command if args.command == "enroll" else args.nodes_command
    if command == "enroll":
        body: dict[str, Any] = {} if args.minutes is None else {"minutes": args.minutes}
        status, reply = _admin_call(base, "POST", "/fleet/enroll", key, body)
    elif command == "approve":
        body = {"fingerprint": args.fingerprint} if args.fingerprint else {}
        status, reply = _admin_call(base, "POST", f"/fleet/nodes/{_quote(args.node_id)}/approve",
                                    key, body)
    elif command == "remove":
        status, reply = _admin_call(base, "POST", f"/fleet/nodes/{_quote(args.node_id)}/remove",
                                    key, {})
    else:
        status, reply = _admin_call(base, "GET", "/fleet/nodes", key, None)
    if status != 200:
        message = reply.get("error") if isinstance(reply, dict) else reply
        print(f"herd: {base} said {status or 'nothing'}: {message}", file=sys.stderr)
        return 1
    if getattr(args, "nodes_json", False) and command is None:
        print(json.dumps(reply, indent=2))
    elif command == "enroll":
        print(f"enrollment window open until {_clock(reply['until'])}" if reply.get("open")
              else "enrollment window closed")
    elif command == "approve":
        print(f"{args.node_id} admitted (key {reply['key_fingerprint']}); it joins with its "
              "next heartbeat")
    elif command == "remove":
        print(f"{args.node_id} removed; it must be admitted again to rejoin")
    else:
        print(_nodes_table(reply), end="")
    return 0


def _quote(node_id: str) -> str:
    from urllib.parse import quote

    return quote(node_id, safe="")


def _clock(stamp: float) -> str:
    import time

    return time.strftime("%H:%M:%S", time.localtime(stamp))


def _admin_call(
    base: str, method: str, path: str, key: str, body: dict[str, Any] | None
) -> tuple[int, Any]:
    """One request to the router's admin API (plain blocking HTTP: this is a command line)."""
    import urllib.error
    import urllib.request

    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, exc.reason
    except (OSError, ValueError) as exc:
        return 0, f"cannot reach the router ({exc}); is `herd` running?"


def _nodes_table(reply: dict[str, Any]) -> str:
    rows = [("NODE", "ADMISSION", "STATUS", "KEY", "ADDRESS", "LAST SEEN")]
    for node in reply.get("nodes", []):
        ago = node.get("last_heartbeat_s_ago")
        rows.append((
            node["node_id"], node["admission"], node["status"], node.get("key_fingerprint") or "-",
            node.get("peer") or node.get("url") or "-",
            "-" if ago is None else f"{ago:.0f}s ago",
        ))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    if len(rows) == 1:
        lines.append("(no nodes)")
    enrollment = reply.get("enrollment") or {}
    if enrollment.get("open"):
        lines.append(f"enrollment window open until {_clock(enrollment['until'])}")
    if any(node["admission"] == "pending" for node in reply.get("nodes", [])):
        lines.append("admit a pending node with `herd nodes approve NODE` after comparing its key "
                     "with the one in the node's log")
    return "\n".join(lines) + "\n"


def _plugins_command(host: PluginHost, config: Config, *, as_json: bool) -> int:
    try:
        rows = host.describe(config)
    except Exception as exc:  # noqa: BLE001 - name the problem, never a traceback
        print(f"herd: {exc}", file=sys.stderr)
        return 1
    failed = [{"name": f.name, "dist": f.dist, "version": f.version, "error": f.error} for f in host.failed]
    if as_json:
        print(json.dumps({"plugins": rows, "failed": failed}, indent=2))
        return 0
    for pattern in host.unmatched_patterns():
        print(f"no installed plugin matches {pattern!r}")
    if not rows and not failed and not host.patterns:
        print("no plugins installed")
    for row in rows:
        print(f"{row['name']}  ({row['dist']} {row['version']})")
        for family, items in row["provides"].items():
            print(f"    {family}: {', '.join(items) if items else '-'}")
    for row in failed:
        print(f"{row['name']}  ({row['dist']} {row['version']})  FAILED: {row['error']}")
    return 0


def settings_markdown(config: Config) -> str:
    """The configuration reference: docs/configuration.md is this text (a test keeps them equal)."""
    lines = [
        "# Configuration",
        "",
        "Every setting is an environment variable: `FLEET_*` for the router, `FLEET_NODE_*` for the",
        "node agent. Command-line flags override the environment, which overrides the defaults.",
        "Plugins declare their own settings; this page lists those of the plugins in this repository",
        "and is generated by `herd settings --markdown`. A number is always finite; where the type",
        "shows an interval (`[1, 65535]`, `(0, )`: above 0), a value outside it is refused at start.",
        "",
    ]
    for scope, title in (("router", "Router"), ("both", "Router and node"), ("node", "Node agent")):
        specs = sorted((s for s in config.specs if s.scope == scope), key=lambda s: s.env)
        if not specs:
            continue
        lines += [f"## {title}", "", "| variable | type | default | meaning |", "|---|---|---|---|"]
        for spec in specs:
            default = spec.default
            if spec.env in ("FLEET_NODE_NODE_ID",):
                default = "(host name)"
            elif hasattr(default, "home") and str(default).startswith(str(default.home())):
                default = "~" + str(default)[len(str(default.home())):]
            kind = f"{spec.type.__name__} {spec.bounds}".rstrip()
            lines.append(f"| `{spec.env}` | {kind} | `{default}` | {spec.help} |")
        lines.append("")
    return "\n".join(lines)


def _settings_text(config: Config) -> str:
    width = max(len(s.env) for s in config.specs)
    lines = []
    for spec in sorted(config.specs, key=lambda s: s.env):
        line = f"{spec.env:<{width}}  {config[spec.env]!s}"
        if config.source(spec.env) == "runtime":
            line += f"  (changed while running, kept in settings.json; configured: " \
                    f"{config.configured(spec.env)!s})"
        lines.append(line + "\n")
    return "".join(lines)


async def _serve_router(
    host: PluginHost, config: Config, args: argparse.Namespace, demo: DemoFleet | None = None
) -> int:
    from herd_kernel.app import create_app, drain, serve

    app = create_app(config, host)
    bind, port = config["FLEET_HOST"], config["FLEET_PORT"]
    runner, _site = await serve(app, bind, port, reuse_address=True)
    local = f"http://127.0.0.1:{port}"
    stop = asyncio.Event()
    on_signals(stop.set)
    background: list[Callable[[], Any]] = []
    print(f"Herd {__version__} routing on http://{bind}:{port}", file=sys.stderr)
    if config["FLEET_SECRET"]:
        print("  fleet secret set: start nodes with the same secret, e.g.\n"
              "  FLEET_NODE_SECRET=<the secret> herd-node --router-url "
              f"http://<this machine>:{port}   (or --secret)", file=sys.stderr)
    elif bind not in ("127.0.0.1", "localhost", "::1"):
        print("  nodes on other machines wait for your approval: `herd nodes` lists them,\n"
              "  `herd nodes approve ID` admits one, `herd enroll` admits new ones for a while.",
              file=sys.stderr)
    try:
        if not args.no_local_node:
            engines = await _local_engines(host, config)
            if engines:
                print(f"  {', '.join(engines)} on this machine: adding it as a node",
                      file=sys.stderr)
                background.append(await _start_agent(host, config, local, None))
            else:
                print("  no engine answered on this machine; it is not a node.", file=sys.stderr)
                if demo is None:
                    print("  try `herd --demo` for a simulated fleet, or add machines with\n"
                          f"  `herd-node --router-url http://<this machine>:{port}`", file=sys.stderr)
        if demo is not None:
            background.append(await _start_demo(host, config, demo, local, args.demo_nodes))
        print(f"  status:  curl {local}/fleet/status\n"
              f"  chat:    curl {local}/api/chat -d "
              "'{\"model\":\"llama3.2:3b\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'",
              file=sys.stderr)
        await stop.wait()
    finally:
        print("Herd stopping: finishing requests (FLEET_SHUTDOWN_GRACE "
              f"{config['FLEET_SHUTDOWN_GRACE']:g} s)", file=sys.stderr)
        await drain(runner, config["FLEET_SHUTDOWN_GRACE"])
        for closer in reversed(background):
            await closer()
        await runner.cleanup()
    return 0


async def _local_engines(host: PluginHost, config: Config) -> list[str]:
    """The engines the backends' node probes find on this machine, as the built-in agent would
    report them ("ollama 0.12.3 at http://127.0.0.1:11434")."""
    from herd_kernel.api import NodeContext

    found: list[str] = []
    async with aiohttp.ClientSession() as http:
        ctx = NodeContext(config=config, node_id="local", http=http, budget=1.5)
        for backend in host.backends(config):
            try:
                fragment = await asyncio.wait_for(backend.probe(ctx), 2.0)
            except Exception as exc:  # noqa: BLE001 - a probe that fails finds nothing
                log.debug("local probe failed", backend=backend.name, error=repr(exc))
                continue
            for endpoint in (fragment or {}).get("endpoints", ()):
                if isinstance(endpoint, dict) and endpoint.get("healthy"):
                    name = endpoint.get("engine") or endpoint.get("kind") or backend.name
                    version = f" {endpoint['version']}" if endpoint.get("version") else ""
                    found.append(f"{name}{version} at {endpoint.get('url')}")
    return found


async def _start_agent(
    host: PluginHost, config: Config, router_url: str, node_id: str | None, **extra: Any,
) -> Callable[[], Any]:
    from herd_node.agent import NodeAgent  # the one place the kernel starts an agent

    # an agent inside the router's process reaches its engines directly: no LAN proxy
    overrides: dict[str, Any] = {"router_url": router_url,
                                 "FLEET_NODE_SECRET": config["FLEET_SECRET"],
                                 "FLEET_NODE_LAN_PROXY": "off", **extra}
    if node_id:
        overrides["node_id"] = node_id
    agent = NodeAgent(config.with_overrides(**overrides), host)
    task = asyncio.create_task(agent.run(), name=f"herd-agent-{agent.node_id}")

    async def close() -> None:
        agent.stop()
        await asyncio.gather(task, return_exceptions=True)

    return close


def _demo_fleet(host: PluginHost, config: Config) -> DemoFleet:
    """The one simulated fleet the loaded plugins offer (herd-sim's ``demo-sim``)."""
    fleets = host.demo_fleets(config)
    if len(fleets) == 1:
        return fleets[0]
    if fleets:
        names = ", ".join(sorted(fleet.name for fleet in fleets))
        raise RuntimeError(f"--demo: several plugins offer a simulated fleet ({names}); "
                           "keep one with --plugins")
    raise RuntimeError("--demo needs a plugin that offers a simulated fleet, and none is loaded: "
                       "install herd-sim (contrib/herd-sim) and keep its plugin demo-sim in "
                       "--plugins / FLEET_PLUGINS")


async def _start_demo(
    host: PluginHost, config: Config, demo: DemoFleet, router_url: str, count: int
) -> Callable[[], Any]:
    """Start the demo's simulated machines, and an agent in this process in front of each."""
    agents: list[Callable[[], Any]] = []

    async def start_agent(node_id: str, **settings: Any) -> None:
        agents.append(await _start_agent(host, config, router_url, node_id, **settings))

    async def stop_agents() -> None:
        for closer in reversed(agents):
            await closer()

    try:
        stop_fleet = await demo.start(router_url, max(1, count), start_agent)
    except BaseException:
        await stop_agents()
        raise

    async def close() -> None:
        await stop_agents()
        await stop_fleet()

    return close


if __name__ == "__main__":
    raise SystemExit(herd_main())
