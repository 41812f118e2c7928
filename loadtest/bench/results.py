"""What a run found: each run of each figure and phase, and the same grouped over the runs (median, spread)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from loadtest.bench.checks import Check
from loadtest.bench.stats import Spread, Target

SERVER_COLUMNS = ("app", "valkey", "postgres", "worker")
COUNTED_UNITS = ("req/s", "calls/s", "claims/s", "bytes")


def number_format(unit: str) -> str:
    """How a value in ``unit`` is written (a ``str.format`` pattern)."""
    if unit in COUNTED_UNITS:
        return "{:,.0f}"
    return "{:,.1f}" if unit == "MiB" else "{:,.2f}"


def shown_number(value: float, unit: str) -> str:
    return number_format(unit).format(value)


@dataclass
class Figure:
    key: str
    label: str
    value: float | None
    unit: str
    detail: str = ""
    generator_bound: bool = False
    run: int = 1  # which round measured it (1-based)

    def shown(self) -> str:
        if self.value is None:
            return "not measured"
        return f"{shown_number(self.value, self.unit)} {self.unit}" + (
            " (generator-bound)" if self.generator_bound else ""
        )


@dataclass
class Phase:
    key: str
    label: str
    seconds: float  # active span: first request .. last answer
    cpu_seconds: dict[str, float]  # per process tree
    generator: str
    generator_threads: int
    generator_seconds: float  # the generator's own CPU time
    generator_bound: bool
    rss_max_bytes: int = 0
    rss_processes: int = 0
    other_seconds: float = 0.0  # CPU used meanwhile by processes the run did not start
    wall_seconds: float = 0.0  # the whole phase (generator start-up and grace included)
    requests: int = 0  # answers (calls for the raw ceiling, claims for the worker's phases)
    run: int = 1

    def cores(self, name: str) -> float | None:
        if name not in self.cpu_seconds or self.seconds <= 0:
            return None
        return self.cpu_seconds[name] / self.seconds

    def micros_per_request(self, name: str) -> float | None:
        """CPU microseconds of one process tree (or ``generator``) per answer."""
        seconds = self.generator_seconds if name == "generator" else self.cpu_seconds.get(name)
        if seconds is None or self.requests <= 0:
            return None
        return seconds / self.requests * 1e6

    @property
    def generator_cores(self) -> float:
        return self.generator_seconds / self.seconds if self.seconds > 0 else 0.0

    @property
    def other_cores(self) -> float:
        return self.other_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0


T = TypeVar("T", Figure, Phase)


def by_key(items: Iterable[T]) -> list[list[T]]:
    """Items grouped by key, keys in the order they first appear, each group in run order."""
    groups: dict[str, list[T]] = {}
    for item in items:
        groups.setdefault(item.key, []).append(item)
    return [sorted(group, key=lambda item: item.run) for group in groups.values()]


def bound_shown(bound: int, runs: int) -> str:
    if bound == 0:
        return ""
    return "generator-bound" if bound == runs else f"generator-bound in {bound} of {runs} runs"


@dataclass(frozen=True)
class FigureRuns:
    """One figure over the runs."""

    runs: list[Figure]

    @property
    def first(self) -> Figure:
        return self.runs[0]

    @property
    def spread(self) -> Spread:
        return Spread.of([f.value for f in self.runs])

    @property
    def median_run(self) -> Figure:
        """The run nearest the median, whose details the report shows."""
        measured = [f for f in self.runs if f.value is not None]
        index = self.spread.median_index
        return self.first if index is None else measured[index]

    @property
    def bound(self) -> str:
        return bound_shown(sum(f.generator_bound for f in self.runs), len(self.runs))

    def shown(self) -> str:
        median = self.spread.median
        if median is None:
            return "not measured"
        return f"{shown_number(median, self.first.unit)} {self.first.unit}" + (
            f" ({self.bound})" if self.bound else ""
        )


def median_of(phases: list[Phase], read: Callable[[Phase], float | None]) -> float | None:
    values = [v for v in (read(p) for p in phases) if v is not None]
    return statistics.median(values) if values else None


@dataclass
class Results:
    command: str
    started: str
    machine: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    postgres: dict[str, str] = field(default_factory=dict)
    valkey: dict[str, str] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)  # every run's
    phases: list[Phase] = field(default_factory=list)  # every run's
    targets: list[Target] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    unsettled: int | None = (
        None  # stream entries the worker had not acknowledged at the end (None: not looked)
    )
    runs: int = 1  # rounds asked for (--repeat)
    phases_run: list[str] = field(default_factory=list)
    phases_skipped: list[str] = field(default_factory=list)

    def figure(self, key: str, run: int | None = None) -> Figure | None:
        return next((f for f in self.figures if f.key == key and run in (None, f.run)), None)

    def value(self, key: str, run: int) -> float | None:
        figure = self.figure(key, run)
        return figure.value if figure else None

    def figure_runs(self) -> list[FigureRuns]:
        return [FigureRuns(group) for group in by_key(self.figures)]

    def phase_runs(self) -> list[list[Phase]]:
        return by_key(self.phases)
