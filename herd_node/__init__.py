"""The node agent (``herd-node``): describes this machine to the router every few seconds.

A package of its own beside ``herd_kernel``: it uses the kernel's public modules (config, auth,
api, plugins, logs) and nothing of the router's.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NodeAgent"]


def __getattr__(name: str) -> Any:
    # loaded on first use, so that ``herd_node.settings`` (read by ``herd``) stays light
    if name == "NodeAgent":
        from herd_node.agent import NodeAgent

        return NodeAgent
    raise AttributeError(f"module 'herd_node' has no attribute {name!r}")
