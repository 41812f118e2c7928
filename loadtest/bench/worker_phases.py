"""The worker's phases of a round: it drains the round's load claims into Postgres (informative; it also leaves
the streams settled for what follows); then, with no worker running, a backlog of claims is made through
``ClaimService`` (Redis bytes per coupon read around it) and one worker is timed draining it."""

from __future__ import annotations

import asyncio
import time

from loadtest.bench import servers
from loadtest.bench.backlog import claims_rows, ledger_bytes, make_backlog, settled_memory, time_drain
from loadtest.bench.catalog import Activity
from loadtest.bench.checks import redis_state, wait_drained, wait_settled
from loadtest.bench.procs import CpuWatch
from loadtest.bench.results import Figure, Phase
from loadtest.bench.session import Session

SETTLE_SECONDS = 60  # for the worker to acknowledge the last deliveries once every claim is persisted
BACKLOG_PROCESSES = 2
BACKLOG_CONCURRENCY = 64


def drain(s: Session, activities: list[Activity]) -> None:
    """One worker until the round's claims are rows in Postgres and every stream entry is acknowledged."""
    expected = {a.id: redis_state(s.rd, a.id)[0] for a in activities}
    total = sum(expected.values())
    s.say(f"the worker drains the round's {total:,} claims into Postgres")
    s.worker = servers.start_worker(s.env, s.dir / f"worker-drain-{s.run}.log", s.pidfile, s.code)
    try:
        with CpuWatch(s.roots(None)) as cpu:
            rows = asyncio.run(wait_drained(s.pg.url, expected, float(s.opt("drain_timeout"))))
        s.results.unsettled = wait_settled(s.rd, SETTLE_SECONDS)  # the backlog's worker starts clean
    finally:
        s.stop("worker")
    if s.results.unsettled:
        s.say(
            f"{s.results.unsettled:,} stream entries unacknowledged {SETTLE_SECONDS} s after the claims drained"
        )
    short = {a: n - rows[a] for a, n in expected.items() if rows[a] < n}
    if short:
        s.fail(f"the worker had not persisted every claim within {s.opt('drain_timeout')} s: {short}")
    phase = Phase(
        "drain", "worker drains the round's load phases", cpu.seconds, cpu.used, "none", 0, 0.0, False
    )
    phase.requests = total
    s.record(cpu, phase)
    s.figure(
        Figure(
            "worker_drain_load",
            "worker draining the load phases' claims (informative)",
            total / cpu.seconds,
            "claims/s",
            f"{total:,} claims of {len(expected)} activities in {cpu.seconds:.1f} s, worker start-up included",
        )
    )
    s.say(f"drained {total:,} claims in {cpu.seconds:.1f} s")


def make(s: Session, activity: Activity, count: int) -> None:
    """The backlog, with no worker running; Redis bytes per coupon and the rate it was made at."""
    before = settled_memory(s.rd)
    s.say(f"backlog: {count:,} claims through ClaimService (claim + deliver scripts), no worker running")
    seconds = asyncio.run(
        make_backlog(s.vk.url, activity.id, count, BACKLOG_PROCESSES, BACKLOG_CONCURRENCY, f"bk{s.run}-")
    )
    activity.granted = count
    after = settled_memory(s.rd)
    s.figure(
        Figure(
            "redis_bytes_per_coupon",
            "Redis memory per issued coupon",
            (after - before) / count,
            "bytes",
            f"INFO used_memory {before / 2**20:,.1f} MiB before, {after / 2**20:,.1f} MiB after {count:,} claims"
            " (one coupon each, users new to the run) with no worker running: the claim's and the delivery's"
            " stream entries (not yet trimmed: the worker trims only what it persisted), the coupon in its wallet"
            " bucket, the user's wallet index entry, the user and device counters",
        )
    )
    s.figure(
        Figure(
            "backlog_rate",
            "backlog made through ClaimService, no HTTP (informative)",
            count / seconds,
            "claims/s",
            f"{BACKLOG_PROCESSES} client processes x {BACKLOG_CONCURRENCY} in flight",
        )
    )
    s.say(f"backlog made in {seconds:.1f} s; {(after - before) / count:,.0f} bytes of Redis per coupon")


def backlog_phase(s: Session) -> None:
    activity, count = s.activity("backlog"), s.opt("backlog")
    tables_before = asyncio.run(ledger_bytes(s.pg.url))
    make(s, activity, count)
    existing = asyncio.run(claims_rows(s.pg.url))
    s.say(f"starting one worker on the backlog (the claims table holds {existing:,} rows already)")
    began = time.monotonic()
    s.worker = servers.start_worker(s.env, s.dir / f"worker-backlog-{s.run}.log", s.pidfile, s.code)
    try:
        with CpuWatch(s.roots(None)) as cpu:
            rows, first, done = asyncio.run(
                time_drain(s.pg.url, activity.id, count, float(s.opt("drain_timeout")))
            )
        s.say("waiting for the worker to acknowledge every stream entry")
        s.results.unsettled = wait_settled(s.rd, SETTLE_SECONDS)
    finally:
        s.stop("worker")
    if s.results.unsettled:
        s.say(
            f"{s.results.unsettled:,} stream entries unacknowledged {SETTLE_SECONDS} s after the backlog drained"
        )
    if rows < count:
        s.fail(f"worker: {rows:,} of {count:,} backlog claims persisted within {s.opt('drain_timeout')} s")
    total = done - began
    phase = Phase("worker", "worker alone drains the backlog", total, cpu.used, "none", 0, 0.0, False)
    phase.requests = rows
    s.record(cpu, phase)
    after_first = (
        f"; {rows / (done - first):,.0f} claims/s from the first row" if first and done > first else ""
    )
    s.figure(
        Figure(
            "worker",
            "worker alone draining a backlog",
            rows / total,
            "claims/s",
            f"{rows:,} claims rows in {total:,.2f} s from the worker's start (one `claimgate worker`;"
            f" {(first or began) - began:.2f} s until the first row{after_first}); the claims table held"
            f" {existing:,} rows before (the worker's ledger checks read it: it grows from round to round);"
            " polled every 0.2 s with count(*)",
        )
    )
    s.say(f"worker: {rows:,} claims in {total:.1f} s = {rows / total:,.0f} claims/s")
    ledger_growth(s, tables_before, asyncio.run(ledger_bytes(s.pg.url)), rows)


def ledger_growth(s: Session, before: dict[str, int], after: dict[str, int], claims: int) -> None:
    """Postgres bytes per persisted claim, by table: what a million claims add to the ledger."""
    grown = {table: after[table] - before[table] for table in after}
    per_million = ", ".join(f"{table} {grown[table] / claims:,.0f} B" for table in grown)
    s.figure(
        Figure(
            "postgres_bytes_per_claim",
            "Postgres growth per persisted claim (one coupon each)",
            sum(grown.values()) / claims,
            "bytes",
            f"pg_total_relation_size (indexes and TOAST included) around the backlog of {claims:,} unkeyed"
            f" claims, by table: {per_million}; WAL not counted; a million such claims add about"
            f" {sum(grown.values()) / claims * 1e6 / 2**30:,.2f} GiB",
        )
    )
