"""The report of ``loadtest/durability.py`` (markdown): what each Redis durability setting cost in its rounds,
what each can lose, and what the fault tests measured."""

from __future__ import annotations

import argparse
import statistics

from loadtest.durability_rounds import WARMUP_CLAIMS, Result

# What each setting can lose (design.md, "Redis restarts, rollbacks, durability"), for the report.
LOSSES = {
    "baseline": "everything not yet persisted by the worker, on any Redis restart (the fence then holds state "
    "changes until `claimgate restore` rebuilds Redis from the ledger)",
    "fast": "a crash of the Redis process alone usually loses nothing acknowledged (the write reaches the kernel "
    "before the reply), though Redis may postpone the write up to 2 s while a slow fsync runs; a machine crash "
    "can lose about the last second of acknowledged claims (up to 2 s while an fsync stalls)",
    "safe": "nothing acknowledged, on one machine (each write is fsynced before its reply); in a replicated "
    "deployment the safe setting is a replica acknowledging through `WAIT` (not `WAITAOF`, which answers at once "
    "under `everysec` in the bundled Valkey 9.1 and in Redis before the fix of 8.0)",
}

# Measured by tests/faults/test_redis_durability.py::test_rollback_without_a_drain_... (a machine crash of the
# fast setting simulated by putting back an AOF copy taken under load with the worker stopped); quoted in the
# report. Run `.venv/bin/python -m pytest -m fault tests/faults/test_redis_durability.py -s` to see it again.
ROLLBACK_MEASURED = """\
```
rollback without a drain (fast setting, simulated machine crash): 317 claims acknowledged before the AOF copy,
483 after it; 155 persisted by the worker at the crash (162 in the copy only, drained after the restart);
LOST 483 acknowledged claims (in neither the ledger nor the restored Redis) = exactly the 483 acknowledged after
the copy and never persisted. [...] delayed fsyncs before the copy 0
```"""


def costs(results: list[Result], args: argparse.Namespace) -> list[str]:
    """How the rounds ran, and each setting's cost against the baseline."""
    base = next(r for r in results if r.setting.name == "baseline")
    lines = [
        "# Durability settings: what they cost and what they can lose",
        "",
        "Written by `loadtest/durability.py` (run: `.venv/bin/python loadtest/durability.py"
        f" --claims {args.claims} --concurrency {args.concurrency} --rounds {args.rounds}"
        f" --processes {args.processes}`). Each claim is the gateway's own Redis work (`ClaimService.claim`"
        " through `ScriptRunner`: script `claim` in the activity's slot, then `deliver` in the user's wallet"
        " bucket; two round trips), no HTTP, from one Python process per `--processes` (uvloop, as the gateway"
        " runs), against a standalone Valkey on this machine with automatic AOF rewrites off; distinct users,"
        " every claim granted, a fresh Valkey each round, settings interleaved. claims/s is the median of the"
        " rounds; p50/p99 are over every claim of the setting's rounds; Valkey CPU is the server process's"
        " user + system time during the measured claims, per claim (median of the rounds).",
        "",
        "| setting | claims/s | rounds min–max | vs. baseline | p50 ms | vs. baseline | p99 ms | vs. baseline |"
        " Valkey CPU µs / claim | vs. baseline | AOF bytes / claim | delayed fsyncs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        p50, p99 = result.percentile(0.50), result.percentile(0.99)
        aof = statistics.median(r.aof_bytes / (r.claims + WARMUP_CLAIMS) for r in result.rounds)
        delayed = sum(r.delayed_fsyncs for r in result.rounds)
        low, high = min(r.rate for r in result.rounds), max(r.rate for r in result.rounds)
        lines.append(
            f"| {result.setting.label} | {result.rate:,.0f} | {low:,.0f}–{high:,.0f} |"
            f" {result.rate / base.rate:.2f} | {p50 * 1000:.2f} | {p50 / base.percentile(0.50):.2f} |"
            f" {p99 * 1000:.2f} | {p99 / base.percentile(0.99):.2f} | {result.valkey_cpu:.0f} |"
            f" {result.valkey_cpu / base.valkey_cpu:.2f} | {aof:,.0f} | {delayed} |"
        )
    return lines


def spread_and_machine(results: list[Result], machine: dict[str, str]) -> list[str]:
    """Each round's claims/s, the machine, and how to read the figures."""
    return [
        "",
        "Rounds (claims/s, in order): "
        + "; ".join(f"{r.setting.name} " + ", ".join(f"{x.rate:,.0f}" for x in r.rounds) for r in results)
        + ". A difference smaller than the rounds' spread is noise (the load average below says how busy the"
        " machine was).",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()) + ".",
        "",
        "The client side (redis-py, one Python process) is the bottleneck here, as in one gateway process:"
        " Valkey's own CPU per claim is the column to read for what AOF costs the server, and the claims/s and"
        " latency ratios are what one gateway process would see."
        " `always` fsyncs once per event-loop turn, for every write of that turn together (group commit), so with"
        " many claims in flight its cost is shared; a single client claiming one at a time pays a whole fsync"
        " per claim. The numbers are for this machine's disk; a disk with a slower fsync moves `always` (and the"
        " stalls `everysec` can postpone writes behind) much further.",
        "",
    ]


def losses(results: list[Result]) -> list[str]:
    """What each setting can lose, and what the fence and the fault tests say about it."""
    lines = [
        "## What each setting can lose",
        "",
        'From [design.md](../../shared/docs/design.md) ("Redis restarts, rollbacks, durability"):',
        "",
        "| setting | can lose |",
        "|---|---|",
    ]
    lines += [f"| {r.setting.label} | {LOSSES[r.setting.name]} |" for r in results]
    lines += [
        "",
        "Whatever is lost, the fence keeps the rest correct: on every Redis (re)start each gateway compares every"
        " partition's `seq` with the ledger's `partition_marks`; a Redis behind the ledger (it lost acknowledged"
        " writes the ledger holds) takes no state change (503 `overloaded` with `Retry-After`) until"
        " `claimgate restore` has rebuilt those partitions. What the fence cannot save is an acknowledged claim"
        " that neither the ledger nor the restored Redis holds: the fast setting's stated cost, which reconcile"
        " cannot name either.",
        "",
        "## Measured",
        "",
        "[`tests/faults/test_redis_durability.py`](../tests/faults/test_redis_durability.py)"
        " (`.venv/bin/python -m pytest -m fault tests/faults/test_redis_durability.py -s`):",
        "",
        "- `test_kill_9_of_redis_in_the_safe_setting_loses_nothing_acknowledged`: `kill -9` of Redis under load"
        " with `appendfsync always`, restarted from its AOF on the same port: every claim acknowledged before the"
        " kill is in the restarted Redis and the ledger, no partition is behind, the fence reopens by itself."
        " (A process crash cannot tell `always` from `everysec`: both hand the write to the kernel before the"
        " reply. What `always` adds, surviving a machine crash, no test on one machine can show.)",
        "- `test_rollback_of_a_drained_redis_stays_fenced_until_restore`: an AOF copy taken under load (its last"
        " write torn) put back after the worker persisted everything: the gateway refuses claims (503"
        " `overloaded`, Retry-After) and `/readyz` names the partitions behind until `claimgate restore`; then the"
        " sale sells out with every unit sold once.",
        "- [`test_rollback_without_a_drain_loses_exactly_the_claims_acknowledged_after_the_copy`]"
        "(../tests/faults/test_redis_durability.py): the fast setting's loss on a machine crash, simulated by"
        " putting back an AOF copy with no worker running since the copy. It measured:",
        "",
        ROLLBACK_MEASURED,
        "",
        "The loss is what was acknowledged between the last state on disk and the crash (here the copy; on a real"
        " machine crash in the fast setting, about the last second) minus what the worker persisted in that"
        " window. Claims the worker did persist are not lost: the restarted Redis is then behind the ledger, the"
        " fence holds and `claimgate restore` brings them back (the drained rollback test takes that path). So a"
        " worker that keeps up narrows the loss to about its last unpersisted batch, at the price of a fenced"
        " Redis until restore.",
        "",
    ]
    return lines


def report(results: list[Result], args: argparse.Namespace, machine: dict[str, str]) -> str:
    return "\n".join([*costs(results, args), *spread_and_machine(results, machine), *losses(results)])
