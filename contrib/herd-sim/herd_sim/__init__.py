"""herd-sim: an Ollama HTTP API emulator hosting many virtual nodes in one process.

Each ``SimNode`` answers the native Ollama API and the OpenAI-compatible ``/v1`` API on its own
port, with realistic model loading, memory, eviction, ``keep_alive``, ``num_parallel`` queueing
and deterministic generated text, so that the official ``ollama`` and ``openai`` clients cannot
tell it from a real Ollama. Faults (refused connections, dropped or stalled streams, runner
errors, slow loads) can be injected per node for testing a router.

    from herd_sim import SimFleet, PROFILES
    async with SimFleet([PROFILES["large"], PROFILES["small"]], time_scale=0.01) as fleet:
        url = fleet.nodes["large"].url
"""

from __future__ import annotations

import importlib
from typing import Any

# loaded on first use (PEP 562), so that importing ``herd_sim.sensor`` (a node-agent plugin the
# router also loads) does not load the whole emulator
_EXPORTS = {
    "CATALOGUE": "herd_sim.catalogue", "PROFILES": "herd_sim.catalogue",
    "ModelSpec": "herd_sim.catalogue", "NodeProfile": "herd_sim.catalogue",
    "FAULT_KINDS": "herd_sim.faults", "Fault": "herd_sim.faults",
    "SimFleet": "herd_sim.fleet", "SimNode": "herd_sim.node",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'herd_sim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
