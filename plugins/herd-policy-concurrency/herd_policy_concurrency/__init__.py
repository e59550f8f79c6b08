"""How many requests a node:model lane runs at once, below what its engine reports: one for
embedding-only models and for cold loads short of memory, and fewer when a measured tuner finds
that running requests side by side stops raising the lane's throughput."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from herd_kernel.api import LaneView, SlotView
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl
from herd_kernel.models import NodeState

SETTINGS = (
    Setting(
        env="FLEET_ADAPTIVE_CONCURRENCY",
        type=bool,
        default=True,
        help="Lower a node:model's concurrency when running requests side by side stops raising "
        "its throughput (measured per token), and raise it back when it helps again.",
    ),
)

COLD_HEADROOM = 1.5  # free memory, as a multiple of the model's size, for a parallel cold load
MIN_TOKENS = 8  # shorter answers say too little about the time per token
KEY = "concurrency"  # the policy's name, and its key in ``lane.state``


class ConcurrencyTuner:
    """Learns whether running a lane's requests side by side raises its throughput.

    Each finished request gives its time per generated token, and how many requests ran in the lane
    on average while it ran (itself included). Throughput at concurrency ``c`` is ``c / t_c``
    against ``1 / t_1`` alone, so the gain is ``c * t_1 / t_c``. When, over enough samples, each
    request beside the first adds less than ``MIN_GAIN_PER_REQUEST`` (10 %) of one request's
    throughput (four at once giving less than 1.3 times the tokens per second of one), the cap
    drops below the concurrency measured. Every ``PROBE_AFTER`` requests at the cap it rises by one
    to look again (the node may have been busy with something else).
    """

    MIN_SAMPLES = 8
    MIN_GAIN_PER_REQUEST = 0.1  # each request beside the first must add 10 % of one's throughput
    PROBE_AFTER = 200
    ALPHA = 0.2  # weight of a new sample in the moving averages

    __slots__ = ("cap", "solo", "solo_n", "shared", "shared_n", "shared_at", "since_change")

    def __init__(self) -> None:
        self.cap: int | None = None  # None: no cap learned (the reported limit applies)
        self.solo: float | None = None  # ms per token, running alone
        self.solo_n = 0
        self.shared: float | None = None  # ms per token, running with others
        self.shared_n = 0
        self.shared_at = 0.0  # mean concurrency of the shared samples
        self.since_change = 0

    def observe(self, concurrency: float, ms_per_token: float) -> None:
        """``concurrency``: the mean number of requests running in the lane while this one ran."""
        self.since_change += 1
        if concurrency < 1.5:
            self.solo = _ewma(self.solo, ms_per_token, self.ALPHA)
            self.solo_n += 1
        else:
            self.shared = _ewma(self.shared, ms_per_token, self.ALPHA)
            self.shared_at = _ewma(self.shared_at or None, concurrency, self.ALPHA)
            self.shared_n += 1
        if self.solo_n >= self.MIN_SAMPLES and self.shared_n >= self.MIN_SAMPLES:
            assert self.solo is not None and self.shared is not None
            gain = self.shared_at * self.solo / self.shared
            if gain < 1 + self.MIN_GAIN_PER_REQUEST * (self.shared_at - 1):
                self.cap = max(1, math.ceil(self.shared_at) - 1)
                self._reset()
                return
        if self.cap is not None and self.since_change >= self.PROBE_AFTER:
            self.cap += 1
            self._reset()

    def gain(self) -> float | None:
        if self.solo is None or self.shared is None:
            return None
        return round(self.shared_at * self.solo / self.shared, 3)

    def _reset(self) -> None:
        self.shared = None
        self.shared_n = 0
        self.shared_at = 0.0
        self.since_change = 0


def _ewma(old: float | None, new: float, alpha: float) -> float:
    return new if old is None else old + alpha * (new - old)


def embedding_only(node: NodeState, model: str) -> bool:
    available = node.available.get(model)
    return available is not None and "embedding" in available.capabilities \
        and "completion" not in available.capabilities


def narrowed(node: NodeState, model: str, limit: int) -> int:
    """``limit`` after the fixed rules: Ollama loads embedding models with one slot, and a cold
    load on a machine short of memory starts one request at a time."""
    if limit <= 1:
        return limit
    if model not in node.loaded:
        memory = node.heartbeat.memory
        available = node.available.get(model)
        size_gb = available.size_bytes / 2**30 if available is not None else 0.0
        if memory.pressure != "normal" or memory.available_gb < size_gb * COLD_HEADROOM:
            return 1
    if embedding_only(node, model):
        return 1
    return limit


class ConcurrencyRules:
    """The fixed rules alone (``narrowed``), when the tuner is turned off."""

    name = KEY

    def limit(self, node: NodeState, lane: LaneView, limit: int) -> int:
        return narrowed(node, lane.model, limit)


class AdaptiveConcurrency(ConcurrencyRules):
    """The rules, then the cap a ``ConcurrencyTuner`` learned for the lane (kept in
    ``lane.state["concurrency"]``), fed by every completed request with enough tokens."""

    def limit(self, node: NodeState, lane: LaneView, limit: int) -> int:
        # once per request: the rules and one dict lookup, no more
        limit = narrowed(node, lane.model, limit)
        tuner = lane.state.get(KEY)
        if tuner is not None and tuner.cap is not None and tuner.cap < limit:
            return tuner.cap
        return limit

    def finished(self, slot: SlotView, ok: bool | None, completion_tokens: int | None) -> None:
        if not ok or not completion_tokens or completion_tokens < MIN_TOKENS:
            return
        now = time.monotonic()
        elapsed = now - slot.started
        if elapsed <= 0:
            return
        lane = slot.lane
        # requests running beside this one, on average over its life, itself included
        concurrency = (lane.busy_integral(now) - slot.busy_start) / elapsed
        tuner = lane.state.get(KEY)
        if tuner is None:
            tuner = lane.state[KEY] = ConcurrencyTuner()
        tuner.observe(concurrency, elapsed * 1000 / completion_tokens)

    def describe(self, lane: LaneView) -> Mapping[str, Any]:
        tuner = lane.state.get(KEY)
        return {"throughput_gain": tuner.gain() if tuner is not None else None}


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_lane_policies(config: Config) -> list[ConcurrencyRules]:
    adaptive = config["FLEET_ADAPTIVE_CONCURRENCY"]
    return [AdaptiveConcurrency() if adaptive else ConcurrencyRules()]
