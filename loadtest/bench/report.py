"""What a run found, and its two renderings: markdown (``docs/benchmark.md``) and JSON (``docs/benchmark.json``)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.bench.checks import Check
from loadtest.bench.stats import Target


@dataclass
class Figure:
    key: str
    label: str
    value: float | None
    unit: str
    detail: str = ""
    generator_bound: bool = False

    def shown(self) -> str:
        if self.value is None:
            return "not measured"
        if self.unit in ("req/s", "calls/s", "claims/s", "bytes"):
            text = f"{self.value:,.0f} {self.unit}"
        elif self.unit == "MiB":
            text = f"{self.value:,.1f} {self.unit}"
        else:
            text = f"{self.value:,.2f} {self.unit}"
        return text + (" (generator-bound)" if self.generator_bound else "")


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

    def cores(self, name: str) -> float | None:
        if name not in self.cpu_seconds or self.seconds <= 0:
            return None
        return self.cpu_seconds[name] / self.seconds

    @property
    def generator_cores(self) -> float:
        return self.generator_seconds / self.seconds if self.seconds > 0 else 0.0

    @property
    def other_cores(self) -> float:
        return self.other_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0


@dataclass
class Results:
    command: str
    started: str
    machine: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    postgres: dict[str, str] = field(default_factory=dict)
    valkey: dict[str, str] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    unsettled: int | None = (
        None  # stream entries the worker had not acknowledged at the end (None: not looked)
    )

    def figure(self, key: str) -> Figure | None:
        return next((f for f in self.figures if f.key == key), None)


SERVER_COLUMNS = ("app", "valkey", "postgres", "worker")
SHARED_CORES = 0.2  # other processes' CPU during a phase past which the report says the machine was shared


def _table(header: list[str], rows: list[list[str]], align: str = "") -> list[str]:
    align = align or "-" * len(header)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(results: Results) -> str:
    ok = not results.failures
    shared = [p.label for p in results.phases if p.other_cores >= SHARED_CORES]
    warning = (
        [
            f"**The machine was not quiet**: other processes used ≥ {SHARED_CORES} core during "
            + ", ".join(shared)
            + " (column 'others' under CPU per phase); those figures are lower than this machine gives alone.",
            "",
        ]
        if shared
        else []
    )
    lines = [
        "# Benchmark",
        "",
        f"Written by `{results.command}` on {results.started}; the whole run took {results.wall_seconds:.0f} s"
        f" and {'passed every correctness check' if ok else 'FAILED (see Failures)'}."
        " Every server was started by the run on loopback and stopped by its pid at the end.",
        "",
        *warning,
        "## Machine",
        "",
        *_table(["", ""], [[k, v] for k, v in results.machine.items()]),
        "",
        "## Versions",
        "",
        *_table(["", ""], [[k, v] for k, v in results.versions.items()]),
        "",
        "## Settings",
        "",
        *_table(["", ""], [[k, v] for k, v in results.settings.items()]),
        "",
        "Valkey: " + ", ".join(f"`{k} {v}`" for k, v in results.valkey.items()) + ".",
        "",
        "Postgres (`SHOW`): " + ", ".join(f"`{k}={v}`" for k, v in results.postgres.items()) + ".",
        "",
        "## Figures",
        "",
        *_table(
            ["figure", "value", "details"],
            [[f.label, f.shown(), f.detail] for f in results.figures],
            "-r-",
        ),
        "",
        "## Ratios and targets",
        "",
        *_table(
            ["ratio", "measured", "target", "verdict", "note"],
            [[t.name, t.shown(t.value), t.goal, t.verdict, t.note] for t in results.targets],
            "-rr--",
        ),
        "",
        "## Correctness",
        "",
        "For each activity: the 201s counted by the generator (or the claiming client) = Redis `taken` = claims"
        " rows in Postgres once the worker drained = stock at creation - stock left; no user past its limit; no"
        " claim lost (rows = 201s); no ledger conflict. (The naive baseline's rows are `naive_claims`; its"
        " `taken` is stock - left in `naive_stock`.)",
        "",
        *_table(
            [
                "activity",
                "201s",
                "taken",
                "rows",
                "stock sold",
                "lost",
                "users over limit",
                "conflicts",
                "check",
            ],
            [
                [
                    c.key,
                    f"{c.granted:,}",
                    f"{c.taken:,}",
                    f"{c.rows:,}",
                    f"{c.sold:,}",
                    f"{c.lost:,}",
                    str(c.over_limit),
                    str(c.conflicts),
                    "ok" if c.ok else "FAILED",
                ]
                for c in results.checks
            ],
            "-rrrrrrr-",
        ),
        "",
        "Event streams at the end (every `*:events` stream's group lag + pending, once the worker drained the"
        " backlog): "
        + (
            "not looked at (the run stopped before)."
            if results.unsettled is None
            else f"{results.unsettled:,} entries not yet persisted and acknowledged"
            + (" (ok: every event reached Postgres)." if results.unsettled == 0 else " (FAILED).")
        ),
        "",
        "## CPU per phase",
        "",
        "Cores used = CPU seconds (user + system, every process of the tree: granian's parent and workers, the"
        " postmaster and its backends) over the phase's active span. Generator-bound: the generator used at least"
        " 0.9 of a core per thread, so the figure may be the generator's limit rather than the server's.",
        "",
        *_table(
            [
                "phase",
                "active s",
                "app/gateway",
                "valkey",
                "postgres",
                "worker",
                "generator",
                "threads",
                "bound",
                "others",
            ],
            [
                [
                    p.label,
                    f"{p.seconds:.1f}",
                    *(_cores(p.cores(name)) for name in SERVER_COLUMNS),
                    f"{p.generator_cores:.2f} ({p.generator})",
                    str(p.generator_threads),
                    "generator-bound" if p.generator_bound else "no",
                    f"{p.other_cores:.2f}",
                ]
                for p in results.phases
            ],
            "-rrrrrrr-r",
        ),
        "",
        "## How it was measured",
        "",
        *[f"- {note}" for note in results.notes],
        "",
    ]
    if results.failures:
        lines += ["## Failures", "", *[f"- {failure}" for failure in results.failures], ""]
    return "\n".join(lines)


def as_json(results: Results) -> str:
    data = dataclasses.asdict(results)
    data["targets"] = [{**dataclasses.asdict(t), "met": t.met, "verdict": t.verdict} for t in results.targets]
    data["checks"] = [
        {**dataclasses.asdict(c), "sold": c.sold, "lost": c.lost, "ok": c.ok} for c in results.checks
    ]
    data["passed"] = not results.failures
    return json.dumps(data, indent=1) + "\n"


def write(results: Results, stem: Path) -> tuple[Path, Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    md, js = stem.with_suffix(".md"), stem.with_suffix(".json")
    md.write_text(markdown(results))
    js.write_text(as_json(results))
    return md, js


def summary(results: Results) -> str:
    """The figures, ratios and checks as plain lines, for the terminal."""
    lines = ["", "figures:"]
    lines += [f"  {f.label}: {f.shown()}" + (f"  [{f.detail}]" if f.detail else "") for f in results.figures]
    lines += ["targets:"]
    lines += [f"  {t.name}: {t.shown(t.value)} (target {t.goal}): {t.verdict}" for t in results.targets]
    failed = [c for c in results.checks if not c.ok]
    lines += [f"correctness: {len(results.checks) - len(failed)} of {len(results.checks)} activities ok"]
    lines += [f"  FAILED {c.problem()}" for c in failed]
    if results.failures:
        lines += ["FAILURES:", *[f"  {failure}" for failure in results.failures]]
    shared = [f"{p.label} {p.other_cores:.2f}" for p in results.phases if p.other_cores >= SHARED_CORES]
    if shared:
        lines += ["WARNING, the machine was shared: cores other processes used during " + "; ".join(shared)]
    lines += [f"wall time: {results.wall_seconds:.0f} s"]
    return "\n".join(lines)
