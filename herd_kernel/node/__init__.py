"""The node agent (``herd-node``): describes this machine to the router every few seconds."""

from herd_kernel.node.agent import NodeAgent

__all__ = ["NodeAgent"]
