"""Per ``node:model`` latency history kept in memory: a bounded window of recent samples and the
p75 derived from it, updated when a sample arrives (never while scoring), so a scoring signal
reads a number in O(1) and the cost of a request never grows with history.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Iterable

WINDOW = 256  # recent samples per node:model; older ones stop mattering as the node changes


class LatencyHistory:
    """Implements the ``LatencyView`` that signals see through ``ScoringContext.latency``."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self._samples: dict[tuple[str, str], collections.deque[float]] = {}
        self._sorted: dict[tuple[str, str], list[float]] = {}  # the same window, in order
        self._p75: dict[tuple[str, str], float] = {}
        self._ttft: dict[tuple[str, str], collections.deque[float]] = {}

    def record(self, node_id: str, model: str, latency_ms: float, ttft_ms: float | None = None) -> None:
        key = (node_id, model)
        samples = self._samples.get(key)
        if samples is None:
            samples = self._samples[key] = collections.deque()
            self._sorted[key] = []
        ordered = self._sorted[key]
        if len(samples) >= self.window:  # the oldest sample leaves the window
            del ordered[bisect.bisect_left(ordered, samples.popleft())]
        samples.append(latency_ms)
        bisect.insort(ordered, latency_ms)
        self._p75[key] = _nearest_rank(ordered, 0.75)
        if ttft_ms is not None:
            self._ttft.setdefault(key, collections.deque(maxlen=self.window)).append(ttft_ms)

    def restore(self, rows: Iterable[tuple[str, str, float]]) -> None:
        """Seed from stored history (oldest first), e.g. the store's latest rows at start-up."""
        for node_id, model, latency_ms in rows:
            self.record(node_id, model, latency_ms)

    def p75_ms(self, node_id: str, model: str) -> float | None:
        return self._p75.get((node_id, model))

    def samples(self, node_id: str, model: str) -> int:
        samples = self._samples.get((node_id, model))
        return len(samples) if samples else 0

    def ttft_p50_ms(self, node_id: str, model: str) -> float | None:
        values = self._ttft.get((node_id, model))
        return _quantile(values, 0.5) if values else None


def _quantile(values: Iterable[float], q: float) -> float:
    return _nearest_rank(sorted(values), q)


def _nearest_rank(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    # nearest-rank on the window: simple, and stable for small sample counts
    index = min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))
    return ordered[index]
