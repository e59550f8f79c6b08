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

from herd_sim.catalogue import CATALOGUE, PROFILES, ModelSpec, NodeProfile
from herd_sim.faults import FAULT_KINDS, Fault
from herd_sim.fleet import SimFleet
from herd_sim.node import SimNode

__all__ = ["CATALOGUE", "FAULT_KINDS", "PROFILES", "Fault", "ModelSpec", "NodeProfile",
           "SimFleet", "SimNode"]
__version__ = "0.1.0"
