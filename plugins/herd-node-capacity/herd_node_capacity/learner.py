"""The capacity learner itself, with no I/O and no clock of its own: 168 hour-of-week slots of
decayed statistics, and the assessment (score, trend, mode, ceiling) made from them.

Every method takes the time it should act at, so tests can replay months in a second.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from attrs import define, field

SLOTS = 168  # 7 days x 24 hours
FORMAT = "herd-node-capacity"
VERSION = 1

# Load is one number: CPU matters most to an owner (a busy CPU is what they feel), memory less.
CPU_SHARE = 0.7
# An hour that is busy on some weeks and idle on others counts as busier than its mean: the
# learner should not promise a machine on a Monday morning because the owner was away once.
VARIABILITY = 0.5
# At full confidence, history and the current reading count equally: history predicts the rest
# of the hour, but what the owner is doing right now is never outvoted.
HISTORY_SHARE = 0.5
# A slot's confidence is 1 - exp(-observed hours / SLOT_HOURS): about 0.63 after one full hour
# (one week), 0.82 after two weeks, 0.97 at the steady state a 14-day half-life reaches.
SLOT_HOURS = 1.0
# Days of data before the node-wide factor stops holding history back (it starts at 0.5).
DAYS_FOR_FULL_TRUST = 7.0
# A sample counts for the time since the previous one, but a gap (agent stopped, machine asleep)
# counts for at most this long: one reading after a night off is not a night of evidence.
MAX_SAMPLE_SECONDS = 300.0
FIRST_SAMPLE_SECONDS = 5.0
MIN_SAMPLE_SECONDS = 1.0
# Short-term smoothing of the current load: the fast average is "now" without 5-second spikes;
# fast minus slow is the recent slope.
FAST_SECONDS = 60.0
SLOW_SECONDS = 600.0
# A load difference of this much (0..1 scale) between now and the next hour, or between the fast
# and slow averages, is a trend of +-1.
TREND_SCALE = 0.5
# At full confidence in the next hour's slot, the learned pattern makes 70% of the trend and the
# recent slope the rest; with no history the slope is all there is.
LEARNED_TREND_SHARE = 0.7

MODES = ("paused", "learned_low", "learned_medium", "learned_high", "full")
# score at or above -> mode, checked from the top
MODE_THRESHOLDS = ((0.8, "full"), (0.6, "learned_high"), (0.4, "learned_medium"),
                   (0.2, "learned_low"))
# Fraction of total memory the fleet may use in each mode. The reference capped these at 16, 32
# and 64 GB; fractions scale to big machines instead. A learned "paused" keeps a small ceiling
# rather than 0, because memory-fit reads 0 as "no ceiling" and the node is still routable.
CEILING_FRACTION = {"full": 0.8, "learned_high": 0.5, "learned_medium": 0.25,
                    "learned_low": 0.125, "paused": 0.05}
OVERRIDES = ("", "full", "paused")


def clamp(value: float, low: float = 0.0, high: float = 1.0) -> float:
    return min(high, max(low, value))


def load_of(cpu_pct: float, mem_pct: float) -> float:
    """Percentages -> one load in 0..1."""
    return clamp((CPU_SHARE * cpu_pct + (1.0 - CPU_SHARE) * mem_pct) / 100.0)


class CorruptState(ValueError):
    """A saved state that cannot be trusted (wrong shape, impossible numbers)."""


@define(slots=True)
class SlotStats:
    """Exponentially weighted statistics of one hour of the week. ``weight`` is in observed
    hours, decayed as of ``updated``; means and variances are in percent (and percent squared)."""

    weight: float
    updated: float
    cpu_mean: float
    cpu_var: float
    mem_mean: float
    mem_var: float

    def weight_at(self, now: float, half_life_s: float) -> float:
        # a clock that went backwards must not make old evidence heavier
        age = max(0.0, now - self.updated)
        return self.weight * 0.5 ** (age / half_life_s)

    def load(self) -> float:
        return load_of(self.cpu_mean, self.mem_mean)

    def load_std(self) -> float:
        # the std of a weighted sum is at most the weighted sum of the stds (correlation 1), the
        # cautious bound, which is what we want for "how much can this hour surprise us"
        return (CPU_SHARE * math.sqrt(self.cpu_var)
                + (1.0 - CPU_SHARE) * math.sqrt(self.mem_var)) / 100.0

    def to_list(self) -> list[float]:
        return [round(self.weight, 6), round(self.updated, 1), round(self.cpu_mean, 3),
                round(self.cpu_var, 3), round(self.mem_mean, 3), round(self.mem_var, 3)]


def _update(mean: float, var: float, x: float, alpha: float) -> tuple[float, float]:
    """One exponentially weighted step of mean and variance (West's incremental form)."""
    delta = x - mean
    mean += alpha * delta
    var = (1.0 - alpha) * (var + alpha * delta * delta)
    return mean, var


@define(slots=True)
class CapacityLearner:
    """Learns per hour of the week how loaded the machine usually is, and assesses it now.

    ``localtime`` turns an epoch into a ``struct_time`` (``time.localtime``: the owner's hours are
    local hours); tests pass ``time.gmtime`` to be independent of the machine's time zone.
    """

    half_life_days: float = 14.0
    localtime: Callable[[float], time.struct_time] = time.localtime
    slots: list[SlotStats | None] = field(factory=lambda: [None] * SLOTS)
    first_seen: float | None = None
    last_observed: float | None = None
    observed_hours: float = 0.0  # cumulative, never decayed: what "days_observed" reports
    # short-term state, not persisted: it describes the last few minutes only
    fast: float | None = None
    slow: float | None = None

    @property
    def half_life_s(self) -> float:
        # a zero or negative half-life would divide by zero; treat it as "forget within a minute"
        return max(self.half_life_days * 86400.0, 60.0)

    @property
    def days_observed(self) -> float:
        return self.observed_hours / 24.0

    def slot_index(self, now: float) -> int:
        t = self.localtime(now)
        return t.tm_wday * 24 + t.tm_hour  # Monday 00:00 is slot 0

    # --- learning --------------------------------------------------------------------------------

    def observe(self, now: float, cpu_pct: float, mem_pct: float) -> None:
        """Fold one reading into its hour-of-week slot and the short-term averages."""
        if not (math.isfinite(now) and math.isfinite(cpu_pct) and math.isfinite(mem_pct)):
            return  # one bad reading must not poison weeks of statistics with NaN
        cpu_pct = clamp(cpu_pct, 0.0, 100.0)
        mem_pct = clamp(mem_pct, 0.0, 100.0)
        if self.last_observed is None:
            seconds = FIRST_SAMPLE_SECONDS
        else:
            seconds = min(MAX_SAMPLE_SECONDS, max(MIN_SAMPLE_SECONDS, now - self.last_observed))
        hours = seconds / 3600.0

        index = self.slot_index(now)
        slot = self.slots[index]
        if slot is None:
            self.slots[index] = SlotStats(weight=hours, updated=now, cpu_mean=cpu_pct,
                                          cpu_var=0.0, mem_mean=mem_pct, mem_var=0.0)
        else:
            weight = slot.weight_at(now, self.half_life_s) + hours
            alpha = hours / weight
            slot.cpu_mean, slot.cpu_var = _update(slot.cpu_mean, slot.cpu_var, cpu_pct, alpha)
            slot.mem_mean, slot.mem_var = _update(slot.mem_mean, slot.mem_var, mem_pct, alpha)
            slot.weight = weight
            slot.updated = max(slot.updated, now)

        load = load_of(cpu_pct, mem_pct)
        if self.fast is None or self.slow is None:
            self.fast = self.slow = load
        else:
            self.fast += (1.0 - math.exp(-seconds / FAST_SECONDS)) * (load - self.fast)
            self.slow += (1.0 - math.exp(-seconds / SLOW_SECONDS)) * (load - self.slow)

        self.observed_hours += hours
        if self.first_seen is None:
            self.first_seen = now
        self.last_observed = now if self.last_observed is None else max(self.last_observed, now)

    # --- assessing -------------------------------------------------------------------------------

    def confidence(self, index: int, now: float) -> float:
        """How far to trust slot ``index``: its decayed observed hours, times a node-wide factor
        that starts at 0.5 and reaches 1 after DAYS_FOR_FULL_TRUST days of data."""
        slot = self.slots[index]
        if slot is None:
            return 0.0
        per_slot = 1.0 - math.exp(-slot.weight_at(now, self.half_life_s) / SLOT_HOURS)
        node_wide = min(1.0, 0.5 + 0.5 * self.days_observed / DAYS_FOR_FULL_TRUST)
        return per_slot * node_wide

    def assess(self, now: float, *, total_gb: float, override: str = "") -> dict[str, Any]:
        """The ``extras["capacity"]`` fragment for this moment."""
        index = self.slot_index(now)
        confidence = self.confidence(index, now)
        slot = self.slots[index]
        current = self.fast
        if current is None:  # nothing observed since start: fall back on history, then on "idle"
            current = slot.load() if slot is not None else 0.0

        if slot is not None:
            expected = clamp(slot.load() + VARIABILITY * slot.load_std())
            history_share = HISTORY_SHARE * confidence
        else:
            expected, history_share = 0.0, 0.0
        score = clamp(history_share * (1.0 - expected) + (1.0 - history_share) * (1.0 - current))

        next_index = (index + 1) % SLOTS
        next_slot = self.slots[next_index]
        learned = 0.0
        learned_share = 0.0
        if next_slot is not None:
            # positive when the next hour is usually lighter than the machine is now
            learned = clamp((current - next_slot.load()) / TREND_SCALE, -1.0, 1.0)
            learned_share = LEARNED_TREND_SHARE * self.confidence(next_index, now)
        slope = 0.0
        if self.fast is not None and self.slow is not None:
            slope = clamp((self.slow - self.fast) / TREND_SCALE, -1.0, 1.0)  # falling load: +
        trend = clamp(learned_share * learned + (1.0 - learned_share) * slope, -1.0, 1.0)

        if override == "paused":
            score, trend, mode, ceiling = 0.0, 0.0, "paused", 0.0
        elif override == "full":
            score, trend, mode = 1.0, 0.0, "full"
            ceiling = CEILING_FRACTION["full"] * total_gb
        else:
            mode = mode_for(score)
            ceiling = CEILING_FRACTION[mode] * total_gb
        return {
            "availability_score": round(score, 3),
            "trend": round(trend, 3),
            "mode": mode,
            "ceiling_gb": round(max(0.0, ceiling), 2),
            "confidence": round(confidence, 3),
            "days_observed": round(self.days_observed, 2),
            "slot": index,
        }

    # --- persistence (pure: the sensor does the file I/O) ------------------------------------------

    def to_json(self, node_id: str, now: float) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "node_id": node_id,
            "saved_at": round(now, 1),
            "first_seen": self.first_seen,
            "last_observed": self.last_observed,
            "observed_hours": round(self.observed_hours, 6),
            "slots": [s.to_list() if s is not None else None for s in self.slots],
        }

    @classmethod
    def from_json(
        cls,
        data: Any,
        *,
        half_life_days: float = 14.0,
        localtime: Callable[[float], time.struct_time] = time.localtime,
    ) -> CapacityLearner:
        """Rebuild a learner from ``to_json`` output; raise ``CorruptState`` if anything is off."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise CorruptState("not a herd-node-capacity state file")
        if data.get("version") != VERSION:
            raise CorruptState(f"unknown state version {data.get('version')!r}")
        raw_slots = data.get("slots")
        if not isinstance(raw_slots, list) or len(raw_slots) != SLOTS:
            raise CorruptState(f"expected {SLOTS} slots")
        slots: list[SlotStats | None] = []
        for i, raw in enumerate(raw_slots):
            if raw is None:
                slots.append(None)
                continue
            if not isinstance(raw, list) or len(raw) != 6 or not all(_is_number(v) for v in raw):
                raise CorruptState(f"slot {i} is not six numbers")
            weight, updated, cpu_mean, cpu_var, mem_mean, mem_var = (float(v) for v in raw)
            if weight < 0 or cpu_var < 0 or mem_var < 0:
                raise CorruptState(f"slot {i} has a negative weight or variance")
            if not (0 <= cpu_mean <= 100 and 0 <= mem_mean <= 100):
                raise CorruptState(f"slot {i} has a mean outside 0..100")
            slots.append(SlotStats(weight, updated, cpu_mean, cpu_var, mem_mean, mem_var))
        first_seen = _optional_number(data, "first_seen")
        last_observed = _optional_number(data, "last_observed")
        observed_hours = data.get("observed_hours")
        if not _is_number(observed_hours) or observed_hours < 0:
            raise CorruptState("observed_hours is not a number >= 0")
        return cls(half_life_days=half_life_days, localtime=localtime, slots=slots,
                   first_seen=first_seen, last_observed=last_observed,
                   observed_hours=float(observed_hours))


def mode_for(score: float) -> str:
    for threshold, mode in MODE_THRESHOLDS:
        if score >= threshold:
            return mode
    return "paused"


def _is_number(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, int | float)
            and math.isfinite(value))


def _optional_number(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if not _is_number(value):
        raise CorruptState(f"{key} is not a number")
    return float(value)
