"""A run's two renderings: markdown (``docs/benchmark.md``) and JSON (``docs/benchmark.json``), and the summary
printed at the end. Every figure and ratio is shown by its median, its spread and each run's value."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from loadtest.bench.checks import Check
from loadtest.bench.results import (
    SERVER_COLUMNS,
    Figure,
    FigureRuns,
    Phase,
    Results,
    bound_shown,
    median_of,
    number_format,
)
from loadtest.bench.stats import Spread, Target

__all__ = ["Figure", "Phase", "Results", "as_json", "markdown", "summary", "write"]

SHARED_CORES = 0.2  # other processes' CPU during a phase past which the report says the machine was shared
PER_REQUEST_COLUMNS = (*SERVER_COLUMNS, "generator")
CORES_HEADER = (
    "phase", "active s", "app/gateway", "valkey", "postgres", "worker", "generator", "threads", "bound", "others",
)  # fmt: skip


def _table(header: list[str], rows: list[list[str]], align: str = "") -> list[str]:
    align = align or "-" * len(header)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _spread(spread: Spread, shown: str) -> str:
    """low–high and its width against the median; '-' for a single run."""
    if len(spread.runs) < 2 or spread.low is None or spread.high is None:
        return "-"
    width = spread.width
    return f"{shown.format(spread.low)}–{shown.format(spread.high)}" + (
        f" ({width:.1%})" if width is not None else ""
    )


def _runs(values: tuple[float, ...], shown: str) -> str:
    return " / ".join(shown.format(v) for v in values) or "-"


def _shared(results: Results) -> list[str]:
    labels = [p.label for p in results.phases if p.other_cores >= SHARED_CORES]
    return list(dict.fromkeys(labels))


def _header(results: Results) -> list[str]:
    ok = not results.failures
    shared = _shared(results)
    phases = ", ".join(results.phases_run) or "none"
    skipped = f" (not run: {', '.join(results.phases_skipped)})" if results.phases_skipped else " (all)"
    lines = [
        "# Benchmark",
        "",
        f"Written by `{results.command}` on {results.started}; the whole run took {results.wall_seconds:.0f} s"
        f" and {'passed every correctness check' if ok else 'FAILED (see Failures)'}."
        " Every server was started by the run on loopback and stopped by its pid at the end.",
        "",
        f"Phases run: {phases}{skipped}; {results.runs} run(s) of each, in rounds (each round runs every"
        " phase once). Each figure is the median of its runs, with the spread (lowest–highest run, and its"
        " width against the median) and every run's value in the order they ran.",
        "",
    ]
    if shared:
        lines += [
            f"**The machine was not quiet**: other processes used ≥ {SHARED_CORES} core during "
            + ", ".join(shared)
            + " (column 'others' under CPU per phase); those figures are lower than this machine gives alone.",
            "",
        ]
    return lines


def _setup(results: Results) -> list[str]:
    return [
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
    ]


def _figure_row(figure: FigureRuns) -> list[str]:
    shown = number_format(figure.first.unit)
    median = figure.median_run
    detail = median.detail
    if len(figure.runs) > 1 and detail:
        detail = f"run {median.run} (nearest the median): {detail}"
    return [
        figure.first.label,
        figure.shown(),
        _spread(figure.spread, shown),
        _runs(figure.spread.runs, shown),
        detail,
    ]


def _figures(results: Results) -> list[str]:
    return [
        "## Figures",
        "",
        *_table(
            ["figure", "median", "spread (low–high)", "runs", "details"],
            [_figure_row(figure) for figure in results.figure_runs()],
            "-rrr-",
        ),
        "",
    ]


def _target_row(target: Target) -> list[str]:
    shown = target.pattern
    return [
        target.name,
        target.shown(target.value),
        target.goal,
        target.verdict,
        _spread(target.spread, shown),
        _runs(target.runs, shown),
        target.note,
    ]


def _targets(results: Results) -> list[str]:
    return [
        "## Ratios and targets",
        "",
        "Each run's ratio pairs the two figures of the same round; measured is the median of those ratios. A"
        " target is met only when the worst end of the runs meets it (the lowest run for ≥, the highest for ≤);"
        " 'met at the median only' when the median meets it and the worst run does not.",
        "",
        *_table(
            ["ratio", "measured", "target", "verdict", "range (low–high)", "runs", "note"],
            [_target_row(t) for t in results.targets],
            "-rr-rr-",
        ),
        "",
    ]


def _check_row(c: Check) -> list[str]:
    counts = (c.granted, c.taken, c.rows, c.sold, c.lost)
    return [
        c.key,
        *(f"{n:,}" for n in counts),
        str(c.over_limit),
        str(c.conflicts),
        "ok" if c.ok else "FAILED",
    ]


def _correctness(results: Results) -> list[str]:
    streams = (
        "not looked at (the run stopped before)."
        if results.unsettled is None
        else f"{results.unsettled:,} entries not yet persisted and acknowledged"
        + (" (ok: every event reached Postgres)." if results.unsettled == 0 else " (FAILED).")
    )
    return [
        "## Correctness",
        "",
        "For each activity (each round claims from its own, `claim-2` being the second round's in-stock"
        " claim): the 201s counted by the generator (or the claiming client) = Redis `taken` = claims rows in"
        " Postgres once the worker drained = stock at creation - stock left; no user past its limit; no claim"
        " lost (rows = 201s); no ledger conflict. (The naive baseline's rows are `naive_claims`; its `taken` is"
        " stock - left in `naive_stock`.)",
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
            [_check_row(c) for c in results.checks],
            "-rrrrrrr-",
        ),
        "",
        "Event streams at the end (every `*:events` stream's group lag + pending, once the worker drained): "
        + streams,
        "",
    ]


def _cores_row(runs: list[Phase]) -> list[str]:
    def cores(name: str) -> str:
        return _cores(median_of(runs, lambda p: p.cores(name)))

    first = runs[0]
    bound = bound_shown(sum(p.generator_bound for p in runs), len(runs)) or "no"
    generator = median_of(runs, lambda p: p.generator_cores) or 0.0
    return [
        first.label,
        f"{median_of(runs, lambda p: p.seconds) or 0.0:.1f}",
        *(cores(name) for name in SERVER_COLUMNS),
        f"{generator:.2f} ({first.generator})",
        str(first.generator_threads),
        bound,
        f"{max(p.other_cores for p in runs):.2f}",
    ]


def _per_request_row(runs: list[Phase]) -> list[str]:
    def micros(name: str) -> str:
        value = median_of(runs, lambda p: p.micros_per_request(name))
        return "-" if value is None else f"{value:,.1f}"

    total = median_of(
        runs,
        lambda p: sum(p.cpu_seconds.values(), p.generator_seconds) / p.requests * 1e6 if p.requests else None,
    )
    answers = median_of(runs, lambda p: float(p.requests) if p.requests else None)
    return [
        runs[0].label,
        "-" if answers is None else f"{answers:,.0f}",
        *(micros(name) for name in PER_REQUEST_COLUMNS),
        "-" if total is None else f"{total:,.1f}",
    ]


def _cpu(results: Results) -> list[str]:
    groups = results.phase_runs()
    return [
        "## CPU per phase",
        "",
        "Cores used = CPU seconds (user + system, every process of the tree: granian's parent and workers, the"
        " postmaster and its backends) over the phase's active span, the median of the runs. Generator-bound:"
        " the generator used at least 0.9 of a core per thread, so the figure may be the generator's limit"
        " rather than the server's. Others: the most any run saw other processes use.",
        "",
        *_table(
            list(CORES_HEADER),
            [_cores_row(runs) for runs in groups],
            "-rrrrrrr-r",
        ),
        "",
        "## CPU per request",
        "",
        "Microseconds of CPU each process tree spent per answer (per call for the raw ceiling, per claim"
        " persisted for the worker's phases): its CPU seconds over the phase / answers, the median of the runs;"
        " 'all' adds every column.",
        "",
        *_table(
            [
                "phase",
                "answers",
                "app/gateway µs",
                "valkey µs",
                "postgres µs",
                "worker µs",
                "generator µs",
                "all µs",
            ],
            [_per_request_row(runs) for runs in groups],
            "-rrrrrrr",
        ),
        "",
    ]


def markdown(results: Results) -> str:
    lines = [
        *_header(results),
        *_setup(results),
        *_figures(results),
        *_targets(results),
        *_correctness(results),
        *_cpu(results),
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
    data["targets"] = [
        {
            **dataclasses.asdict(t),
            "met": t.met,
            "verdict": t.verdict,
            "low": t.spread.low,
            "high": t.spread.high,
        }
        for t in results.targets
    ]
    data["checks"] = [
        {**dataclasses.asdict(c), "sold": c.sold, "lost": c.lost, "ok": c.ok} for c in results.checks
    ]
    data["medians"] = {
        f.first.key: {
            "median": f.spread.median,
            "low": f.spread.low,
            "high": f.spread.high,
            "runs": f.spread.runs,
        }
        for f in results.figure_runs()
    }
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
    lines = ["", f"figures (median of {results.runs} run(s); spread):"]
    for f in results.figure_runs():
        shown = number_format(f.first.unit)
        lines.append(
            f"  {f.first.label}: {f.shown()}  [{_spread(f.spread, shown)}; runs {_runs(f.spread.runs, shown)}]"
        )
    lines += ["targets:"]
    for t in results.targets:
        lines.append(
            f"  {t.name}: {t.shown(t.value)} (runs {_runs(t.runs, '{:.2f}')}; target {t.goal}): {t.verdict}"
        )
    failed = [c for c in results.checks if not c.ok]
    lines += [f"correctness: {len(results.checks) - len(failed)} of {len(results.checks)} activities ok"]
    lines += [f"  FAILED {c.problem()}" for c in failed]
    if results.failures:
        lines += ["FAILURES:", *[f"  {failure}" for failure in results.failures]]
    shared = [
        f"{p.label} (run {p.run}) {p.other_cores:.2f}"
        for p in results.phases
        if p.other_cores >= SHARED_CORES
    ]
    if shared:
        lines += ["WARNING, the machine was shared: cores other processes used during " + "; ".join(shared)]
    lines += [f"wall time: {results.wall_seconds:.0f} s"]
    return "\n".join(lines)
