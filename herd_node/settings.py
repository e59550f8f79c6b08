"""The node agent's settings (``FLEET_NODE_*``). ``herd-node`` reads them, and so does ``herd``,
which runs an agent in its own process for a local Ollama and for ``--demo``.
"""

from __future__ import annotations

import socket
from pathlib import Path

from herd_kernel.config import Setting, default_data_dir

NODE_SETTINGS: tuple[Setting, ...] = (
    Setting(
        env="FLEET_NODE_ROUTER_URL",
        type=str,
        default="",
        help="Router to report to, e.g. http://192.168.1.10:11435; empty finds it by discovery.",
        scope="node",
    ),
    Setting(
        env="FLEET_NODE_OLLAMA_HOST",
        type=str,
        default="http://localhost:11434",
        help="The local Ollama this agent describes and serves.",
        scope="node",
        flag="--ollama-host",
    ),
    Setting(
        env="FLEET_NODE_NODE_ID",
        type=str,
        default=socket.gethostname(),
        help="This node's name in the fleet (default: the host name).",
        scope="node",
    ),
    Setting(
        env="FLEET_NODE_SECRET",
        type=str,
        default="",
        help="The fleet secret the router was given (FLEET_SECRET): signs heartbeats and checks "
        "that a router is the real one. Defaults to FLEET_SECRET when only that is set.",
        scope="node",
        fallback="FLEET_SECRET",
        secret=True,
    ),
    Setting(
        env="FLEET_NODE_LAN_PROXY",
        type=str,
        default="auto",
        help="Offer the router a way to a localhost-only Ollama: 'auto' (only when a fleet "
        "secret is set and FLEET_NODE_OLLAMA_HOST is a loopback address), 'on', or 'off'. The "
        "proxy forwards only the router's routes, signed with the secret when one is set.",
        scope="node",
    ),
    Setting(
        env="FLEET_NODE_PROXY_HOST",
        type=str,
        default="0.0.0.0",
        help="Address the LAN proxy listens on.",
        scope="node",
    ),
    Setting(
        env="FLEET_NODE_PROXY_PORT",
        type=int,
        default=11444,
        help="Port the LAN proxy listens on (0 picks a free one).",
        scope="node",
    ),
    Setting(
        env="FLEET_NODE_HEARTBEAT_INTERVAL",
        type=float,
        default=5.0,
        help="Seconds between heartbeats (fixed rate: a slow probe does not stretch the period).",
        scope="node",
    ),
    Setting(
        env="FLEET_NODE_DATA_DIR",
        type=Path,
        default=default_data_dir(),
        help="Where the node agent keeps its state and logs.",
        scope="node",
        fallback="FLEET_DATA_DIR",
    ),
    Setting(
        env="FLEET_NODE_LOG_LEVEL",
        type=str,
        default="INFO",
        help="Node agent log level.",
        scope="node",
    ),
    Setting(
        env="FLEET_NODE_PLUGINS",
        type=str,
        default="",
        help="Comma-separated plugin names or globs the node agent loads; empty loads all.",
        scope="node",
    ),
)
