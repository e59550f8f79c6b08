"""Prometheus' text exposition format 0.0.4, written here: families of samples with their
``# HELP`` and ``# TYPE`` lines, label values escaped (node names are whatever a heartbeat said),
histograms as cumulative ``_bucket`` lines with ``_sum`` and ``_count``."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


def escape(value: str) -> str:
    """A label value as the format wants it: backslash, double quote and line feed escaped, and
    text that cannot be UTF-8 (a lone surrogate from a JSON ``\\ud800``) replaced."""
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def number(value: float) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{escape(value)}"' for name, value in labels) + "}"


class Histogram:
    """Observations of one labelled series: a count per bucket (not cumulative until written),
    their sum and count. ``observe`` is a bisect and two additions."""

    __slots__ = ("counts", "sum", "count")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, bounds: Sequence[float], value: float) -> None:
        self.counts[bisect_left(bounds, value)] += 1
        self.sum += value
        self.count += 1


class Writer:
    """Collects families, then ``text()``. Each family is written whole, once."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[Labels, float]]) -> None:
        if kind == "counter":  # named with its _total in every line, as Prometheus' clients do
            name += "_total"
        self.lines.append(f"# HELP {name} {_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {number(value)}")

    def histograms(self, name: str, help_text: str, bounds: Sequence[float],
                   series: Mapping[Labels, Histogram]) -> None:
        self.lines.append(f"# HELP {name} {_help(help_text)}")
        self.lines.append(f"# TYPE {name} histogram")
        edges = [number(b) for b in bounds] + ["+Inf"]
        for labels, hist in series.items():
            running = 0
            for edge, count in zip(edges, hist.counts, strict=True):
                running += count
                self.lines.append(f"{name}_bucket{_labels((*labels, ('le', edge)))} {running}")
            self.lines.append(f"{name}_sum{_labels(labels)} {number(hist.sum)}")
            self.lines.append(f"{name}_count{_labels(labels)} {hist.count}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"
