"""Many simulated nodes in one process: ``SimFleet`` starts and stops them together."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Self

from herd_sim.catalogue import NodeProfile
from herd_sim.node import SimNode

__all__ = ["SimFleet"]


class SimFleet:
    """A set of ``SimNode``s, one per profile, keyed by profile name (names must be unique).

    ``base_port`` 0 gives every node a free port; otherwise node *i* listens on
    ``base_port + i``. Usable as ``async with SimFleet([...]) as fleet:``.
    """

    def __init__(self, profiles: Iterable[NodeProfile], host: str = "127.0.0.1",
                 time_scale: float = 1.0, base_port: int = 0) -> None:
        profiles = list(profiles)
        names = [p.name for p in profiles]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"node names must be unique: {', '.join(duplicates)}")
        self.host = host
        self.time_scale = time_scale
        self.nodes: dict[str, SimNode] = {
            p.name: SimNode(p, host=host, port=base_port + i if base_port else 0,
                            time_scale=time_scale)
            for i, p in enumerate(profiles)
        }

    @property
    def urls(self) -> dict[str, str]:
        return {name: node.url for name, node in self.nodes.items()}

    async def start(self) -> None:
        """Start every node; if one fails, the ones already started are stopped again."""
        results = await asyncio.gather(*(n.start() for n in self.nodes.values()),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.stop()
            raise errors[0]

    async def stop(self) -> None:
        await asyncio.gather(*(n.stop() for n in self.nodes.values()))

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
