"""The flags of ``claimgate benchmark`` (this module stays light: the CLI imports it to build its parser)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loadtest.bench.phases import PHASES, phase_list, select

ROOT = Path(__file__).resolve().parents[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Start Valkey, Postgres, the gateway, the bare and naive apps and the worker on loopback, measure the"
        " claim path against its ceilings, check every claim adds up, write docs/benchmark.md and .json."
    )
    add = parser.add_argument
    add(
        "--durability",
        choices=("fast", "safe", "both"),
        default="both",
        help="fast or safe: every figure on that setting; both (default): every figure on fast, plus the"
        " in-stock claim on safe",
    )
    add(
        "--workers", type=int, default=1, help="granian workers of the gateway and of the bare and naive apps"
    )
    add("-t", "--threads", type=int, default=1, help="wrk threads")
    add("-c", "--connections", type=int, default=64, help="wrk connections (every closed-loop phase)")
    add(
        "--repeat",
        type=positive,
        default=3,
        help="runs of each measured phase (the report gives the median and the spread); the runs go in rounds,"
        " each round every selected phase once",
    )
    add(
        "--phases",
        type=phase_list,
        default=None,
        help="comma-separated phases to run (default: all that apply): " + ", ".join(PHASES),
    )
    add("-d", "--duration", "--seconds", type=int, default=10, help="seconds of each measured phase")
    add("--warmup", type=int, default=2, help="seconds of load before each measured phase (not measured)")
    add("--grace", type=int, default=2, help="seconds wrk keeps reading answers after it stops sending")
    add(
        "--users",
        type=int,
        default=50_000,
        help="user tokens at least (more are minted when a phase would use one twice)",
    )
    add("--backlog", type=int, default=100_000, help="claims the worker alone drains")
    add("--raw-calls", type=int, default=200_000, help="claim script calls by redis-benchmark")
    add("--raw-clients", type=int, default=50, help="redis-benchmark connections")
    add("--raw-pipeline", type=int, default=16, help="redis-benchmark calls per round trip")
    add("--naive-pool", type=int, default=16, help="asyncpg connections per naive-app worker")
    add("--open-loop-share", type=float, default=0.8, help="offered rate of the open-loop phase, of the peak")
    add("--valkey-maxmemory", default="4gb", help="Valkey maxmemory (the gateway sheds at 0.9 of it)")
    add(
        "--idle-activities",
        type=int,
        default=1_000,
        help="ended activities beside the idle phase's processes",
    )
    add("--idle-seconds", type=positive, default=30, help="seconds the idle phase measures")
    add(
        "--idle-settle",
        type=int,
        default=15,
        help="seconds the idle phase's processes run before it measures",
    )
    add(
        "--code",
        default=str(ROOT),
        help="checkout the gateway and the worker run from (default: this one); e.g. an older commit exported"
        " with git archive, to compare its figures",
    )
    add("--drain-timeout", type=int, default=300, help="seconds to wait for the worker to persist the claims")
    add("--out", default=str(ROOT / "docs" / "benchmark"), help="path stem of the report (.md and .json)")
    add(
        "--workdir",
        default="/tmp/claimgate-bench",
        help="where servers keep data and logs (a run-<pid> folder, removed at the end unless --keep)",
    )
    add("--keep", action="store_true", help="keep the run's folder (data, logs) at the end")
    add(
        "--wait-quiet",
        type=int,
        default=60,
        help="seconds to wait at the start for other processes to leave the CPU idle (then run anyway)",
    )


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive count")
    return value


def run_benchmark(args: argparse.Namespace) -> int:
    try:
        args.phases = select(args.phases, args.durability)
    except ValueError as exc:
        print(f"claimgate benchmark: error: {exc}", file=sys.stderr)
        return 2
    from loadtest.bench.run import Run

    return Run(args).main()
