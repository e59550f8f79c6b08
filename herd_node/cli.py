"""``herd-node``: the node agent's command line.

Flags keep the reference's names (``--router-url``, ``--ollama-host``, ``--node-id``) so existing
scripts work. Flags override ``FLEET_NODE_*`` variables, which override defaults.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from herd_kernel import __version__
from herd_kernel.config import ROUTER_SETTINGS, Config, SettingError
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
from herd_node.settings import NODE_SETTINGS


def _node_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="herd-node", description="Herd node agent: reports this machine to the router."
    )
    parser.add_argument("--version", "-V", action="version", version=f"herd-node {__version__}")
    parser.add_argument("--router-url", help="router URL (FLEET_NODE_ROUTER_URL); empty = discover")
    parser.add_argument("--node-id", help="this node's name (FLEET_NODE_NODE_ID, default host name)")
    parser.add_argument("--heartbeat-interval", type=float, help="seconds between heartbeats")
    parser.add_argument("--secret", help="the router's fleet secret (FLEET_NODE_SECRET)")
    parser.add_argument("--plugins", help="plugins to load, names or globs, comma-separated")
    parser.add_argument("--data-dir", help="data directory (FLEET_NODE_DATA_DIR / FLEET_DATA_DIR)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    return parser


def node_main(argv: Sequence[str] | None = None) -> int:
    parser = _node_parser()
    add_setting_flags(parser, NODE_SETTINGS)
    # plugins declare flags too (``Setting.flag``): read what is known now, the rest once the
    # selected plugins are loaded
    args, _rest = parser.parse_known_args(argv)
    flags = {
        **setting_flags(args, NODE_SETTINGS),
        "FLEET_NODE_ROUTER_URL": args.router_url,
        "FLEET_NODE_NODE_ID": args.node_id,
        "FLEET_NODE_HEARTBEAT_INTERVAL": args.heartbeat_interval,
        "FLEET_NODE_PLUGINS": args.plugins,
        "FLEET_NODE_DATA_DIR": args.data_dir,
        "FLEET_NODE_LOG_LEVEL": args.log_level,
        "FLEET_NODE_SECRET": args.secret,
    }
    try:
        # the router's settings too: a plugin may read one (a timeout) on either side
        host, config = load((*ROUTER_SETTINGS, *NODE_SETTINGS), flags, "FLEET_NODE_PLUGINS")
    except (SettingError, PluginError) as exc:
        print(f"herd-node: {exc}", file=sys.stderr)
        return 2
    try:
        _args, config = with_plugin_flags(parser, argv, host, config)
    except SettingError as exc:
        print(f"herd-node: {exc}", file=sys.stderr)
        return 2
    setup_logging(config["FLEET_NODE_LOG_LEVEL"], config["FLEET_NODE_DATA_DIR"], "herd-node.jsonl")
    report_plugins(host, "herd-node")
    try:
        return run_loop(_run_node(host, config), config["FLEET_UVLOOP"])
    except KeyboardInterrupt:
        return 0
    except (PluginError, SettingError, RuntimeError) as exc:
        print(f"herd-node: {exc}", file=sys.stderr)
        return 1


async def _run_node(host: PluginHost, config: Config) -> int:
    from herd_node.agent import NodeAgent

    agent = NodeAgent(config, host)
    on_signals(agent.stop)
    await agent.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(node_main())
