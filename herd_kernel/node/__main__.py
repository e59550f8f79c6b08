"""``python -m herd_kernel.node`` is ``herd-node``."""

from herd_kernel.cli import node_main

if __name__ == "__main__":
    raise SystemExit(node_main())
