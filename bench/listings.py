"""Time the listing routes' bodies (/api/tags, /api/ps, /v1/models, /api/version) over a large
fleet: 2,000 fake nodes registered through heartbeat_payload into a Fleet, no sockets.

    uv run --all-packages python bench/listings.py [--nodes 2000] [--models 12]

Prints milliseconds per listing request when nothing changed since the last one (served from
the cache), and right after one node's heartbeat (the fleet changed)."""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

from herd_backend_ollama.router import Listings

from herd_kernel.fleet import Fleet
from herd_kernel.models import Heartbeat, structure
from herd_kernel.testing import heartbeat_payload


def beat(i: int, models: int) -> Heartbeat:
    names = [f"model{m}:{(i + m) % 3}b" for m in range(models)]
    return structure(heartbeat_payload(f"node-{i:05d}", available=names[2:], loaded=names[:2]),
                     Heartbeat)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--models", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    fleet = Fleet()
    beats = [beat(i, args.models) for i in range(args.nodes)]
    for hb in beats:
        fleet.apply_heartbeat(hb)
    listings = Listings(SimpleNamespace(fleet=fleet))
    builders = {"/api/tags": listings.tags_bytes, "/api/ps": listings.ps_bytes,
                "/v1/models": listings.v1_models_bytes, "/api/version": listings.version_bytes}
    print(f"{args.nodes} nodes, {args.models} models each")
    for path, build in builders.items():
        build()  # warm
        start = time.perf_counter()
        for _ in range(args.rounds):
            build()
        unchanged = (time.perf_counter() - start) * 1000 / args.rounds
        start = time.perf_counter()
        for r in range(args.rounds):
            fleet.apply_heartbeat(beats[r])  # one node reports: the fleet changed
            build()
        changed = (time.perf_counter() - start) * 1000 / args.rounds
        print(f"{path:12} unchanged {unchanged:9.3f} ms   after a heartbeat {changed:9.3f} ms   "
              f"{len(build()):,} bytes")


if __name__ == "__main__":
    main()
