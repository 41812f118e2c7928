"""Percentiles, ratios and the targets each ratio is compared with."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


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
class Target:
    name: str
    value: float | None
    op: str  # ">=" or "<="
    threshold: float
    unit: str  # "x" (a ratio) or "ms"
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.threshold if self.op == ">=" else self.value <= self.threshold

    @property
    def verdict(self) -> str:
        return {True: "met", False: "not met", None: "not measured"}[self.met]

    def shown(self, value: float | None) -> str:
        if value is None:
            return "-"
        return f"{value:.2f}x" if self.unit == "x" else f"{value:.2f} ms"

    @property
    def goal(self) -> str:
        return f"{'≥' if self.op == '>=' else '≤'} {self.shown(self.threshold)}"


@dataclass(frozen=True)
class Rates:
    claim: float | None  # in-stock claim route, req/s
    sold_out: float | None
    bare: float | None  # the faster bare app
    naive: float | None
    worker: float | None  # claims persisted/s
    p99_at_80: float | None  # ms, open loop at 80% of the claim rate


def targets(rates: Rates, notes: dict[str, str] | None = None) -> list[Target]:
    notes = notes or {}
    return [
        Target(
            "claim / bare HTTP", ratio(rates.claim, rates.bare), ">=", 0.4, "x", notes.get("claim_bare", "")
        ),
        Target(
            "sold-out / bare HTTP",
            ratio(rates.sold_out, rates.bare),
            ">=",
            0.8,
            "x",
            notes.get("sold_out_bare", ""),
        ),
        Target(
            "claim / naive baseline", ratio(rates.claim, rates.naive), ">=", 10.0, "x", notes.get("naive", "")
        ),
        Target("p99 at 80% of peak claim rate", rates.p99_at_80, "<=", 25.0, "ms", notes.get("p99", "")),
        Target(
            "worker rate / peak claim rate",
            ratio(rates.worker, rates.claim),
            ">=",
            1.0,
            "x",
            notes.get("worker", ""),
        ),
    ]
