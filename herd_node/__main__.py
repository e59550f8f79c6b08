"""``python -m herd_node`` is ``herd-node``."""

from herd_node.cli import node_main

if __name__ == "__main__":
    raise SystemExit(node_main())
