"""Percentiles, the spread of repeated runs, ratios and the targets each ratio is compared with.

A figure measured N times is reported by its median and its spread (the lowest and highest run). A ratio is
computed run by run, pairing the figures of the same round (the rounds are interleaved, so drift hits both
alike), and reported the same way. A target is met only when the worst end of the spread meets it; when only
the median does, the verdict says so.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

MET = "met"
MET_AT_MEDIAN = "met at the median only"
NOT_MET = "not met"
NOT_MEASURED = "not measured"


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest rank: the smallest sample with at least ``pct`` % of the samples at or below it (0.0 if none)."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


@dataclass(frozen=True)
class Spread:
    """The values of one figure or ratio over the runs, in the order they ran."""

    runs: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Spread:
        """The runs that measured something (a run's None is left out)."""
        return cls(tuple(v for v in values if v is not None))

    @property
    def median(self) -> float | None:
        return statistics.median(self.runs) if self.runs else None

    @property
    def low(self) -> float | None:
        return min(self.runs) if self.runs else None

    @property
    def high(self) -> float | None:
        return max(self.runs) if self.runs else None

    @property
    def width(self) -> float | None:
        """high - low, as a share of the median (None when undefined)."""
        median = self.median
        if median is None or median == 0 or self.high is None or self.low is None:
            return None
        return (self.high - self.low) / abs(median)

    def worst(self, op: str) -> float | None:
        """The end that decides a target: the lowest run for ``>=``, the highest for ``<=``."""
        return self.low if op == ">=" else self.high

    @property
    def median_index(self) -> int | None:
        """Index of the run nearest the median (the first of ties): the run whose details the report shows."""
        median = self.median
        if median is None:
            return None
        return min(range(len(self.runs)), key=lambda i: abs(self.runs[i] - median))


@dataclass(frozen=True)
class Target:
    name: str
    value: float | None  # the median of the runs
    op: str  # ">=" or "<="
    threshold: float
    unit: str  # "x" (a ratio), "ms" or "%" (of a core)
    note: str = ""
    runs: tuple[float, ...] = ()  # each run's value; empty: ``value`` is the only one

    def meets(self, value: float) -> bool:
        return value >= self.threshold if self.op == ">=" else value <= self.threshold

    @property
    def spread(self) -> Spread:
        if self.runs:
            return Spread(self.runs)
        return Spread(() if self.value is None else (self.value,))

    @property
    def met(self) -> bool | None:
        """Whether every run meets the target (its spread's worst end does); None when nothing was measured."""
        worst = self.spread.worst(self.op)
        return None if self.value is None or worst is None else self.meets(worst)

    @property
    def verdict(self) -> str:
        if self.met is None or self.value is None:
            return NOT_MEASURED
        if self.met:
            return MET
        return MET_AT_MEDIAN if self.meets(self.value) else NOT_MET

    @property
    def pattern(self) -> str:
        """How a value of this target is written (a ``str.format`` pattern)."""
        return {"x": "{:.2f}x", "%": "{:.2f}%"}.get(self.unit, "{:.2f} ms")

    def shown(self, value: float | None) -> str:
        return "-" if value is None else self.pattern.format(value)

    @property
    def goal(self) -> str:
        return f"{'≥' if self.op == '>=' else '≤'} {self.shown(self.threshold)}"


@dataclass(frozen=True)
class Rates:
    """One round's figures (None: not measured in that round)."""

    claim: float | None  # in-stock claim route, req/s
    sold_out: float | None
    bare: float | None  # the faster bare app
    naive: float | None
    worker: float | None  # claims persisted/s
    p99_at_80: float | None  # ms, open loop at 80% of the claim rate
    idle_worker: float | None = None  # % of a core, the idle phase's worker
    idle_gateway: float | None = None  # % of a core, the idle phase's gateway


TARGETS = (
    # name, numerator, denominator ("" for a figure compared as it is), op, threshold, unit, note key
    ("claim / bare HTTP", "claim", "bare", ">=", 0.4, "x", "claim_bare"),
    ("sold-out / bare HTTP", "sold_out", "bare", ">=", 0.8, "x", "sold_out_bare"),
    ("claim / naive baseline", "claim", "naive", ">=", 10.0, "x", "naive"),
    ("p99 at 80% of peak claim rate", "p99_at_80", "", "<=", 25.0, "ms", "p99"),
    ("worker rate / peak claim rate", "worker", "claim", ">=", 1.0, "x", "worker"),
    ("idle worker, ended activities (% of a core)", "idle_worker", "", "<=", 2.0, "%", "idle"),
    ("idle gateway, ended activities (% of a core)", "idle_gateway", "", "<=", 2.0, "%", "idle"),
)


def targets(rounds: Rates | Sequence[Rates], notes: dict[str, str] | None = None) -> list[Target]:
    """Each target over the rounds: its value per round (a ratio of that round's figures), the median of those."""
    rounds = [rounds] if isinstance(rounds, Rates) else list(rounds)
    notes = notes or {}
    found = []
    for name, numerator, denominator, op, threshold, unit, note in TARGETS:
        values = [
            getattr(r, numerator)
            if not denominator
            else ratio(getattr(r, numerator), getattr(r, denominator))
            for r in rounds
        ]
        spread = Spread.of(values)
        found.append(Target(name, spread.median, op, threshold, unit, notes.get(note, ""), spread.runs))
    return found
