"""The raw ceiling: the ``claim`` script alone, called by redis-benchmark on Valkey (no HTTP, no ``deliver``), on
an activity of its own each round, deleted after. The call itself (keys and arguments) is built by
``redisbench.claim_call`` alone."""

from __future__ import annotations

import asyncio

from gateway.ids import new_id
from gateway.keys import KeySpace
from gateway.scripts.fence import Fence
from gateway.scripts.registry import load_scripts
from gateway.scripts.runner import ScriptRunner, connect
from loadtest.bench import redisbench
from loadtest.bench.checks import redis_state
from loadtest.bench.procs import CpuWatch, run_generator
from loadtest.bench.results import Figure, Phase
from loadtest.bench.session import Session
from loadtest.direct_claims import put_activity

IDEMPOTENCY_TTL = 90_000
GENERATOR_BOUND = 0.9  # of redis-benchmark's one core
SPARE_STOCK = 1000


async def mirror(url: str, activity_id: str, stock: int) -> str:
    """The activity put in Valkey by the ``put_activity`` script; the ``claim`` script's SHA."""
    client = await connect(url, max_connections=4)
    try:
        runner = ScriptRunner(client, load_scripts(), Fence(open_=True), max_in_flight=4)
        await runner.load_all()
        await put_activity(runner, activity_id, stock)
        return runner.scripts["claim"].sha
    finally:
        await client.aclose()


def raw_ceiling(s: Session) -> None:
    calls = s.opt("raw_calls")
    activity_id = "raw" + new_id()
    sha = asyncio.run(mirror(s.vk.url, activity_id, calls + SPARE_STOCK))
    call = redisbench.claim_call(activity_id, sha, redisbench.now(), IDEMPOTENCY_TTL)
    clients, pipeline = s.opt("raw_clients"), s.opt("raw_pipeline")
    command = redisbench.command(s.vk.port, call, calls=calls, clients=clients, pipeline=pipeline)
    s.say(f"raw ceiling: {calls:,} claim script calls by redis-benchmark")
    with CpuWatch({"valkey": s.vk.pid}) as cpu:
        ran = run_generator(command, 300, s.dir)
    if ran.returncode != 0:
        raise RuntimeError(f"redis-benchmark exited with {ran.returncode}: {ran.stderr[-1000:]}")
    rate, p50, p99 = redisbench.parse_csv(ran.stdout)
    taken, _ = redis_state(s.rd, activity_id)
    seconds = calls / rate
    bound = ran.cpu_seconds / seconds >= GENERATOR_BOUND
    phase = Phase(
        "raw",
        "raw claim script (redis-benchmark)",
        seconds,
        cpu.used,
        "redis-benchmark",
        1,
        ran.cpu_seconds,
        bound,
    )
    phase.requests = calls
    s.record(cpu, phase)
    if taken < 0.99 * calls:
        s.fail(f"raw ceiling: only {taken} of {calls} claim calls granted (errors? see redis-benchmark)")
    s.figure(
        Figure(
            "raw_claim_script",
            "raw ceiling: `claim` script on Valkey",
            rate,
            "calls/s",
            f"redis-benchmark EVALSHA, {clients} connections x {pipeline} pipelined; {calls:,} calls, {taken:,}"
            f" granted (the rest drew a user twice: limit_reached); p50 {p50:.2f} ms, p99 {p99:.2f} ms per"
            f" pipelined batch; Valkey {cpu.used['valkey'] / seconds:.2f} cores",
            bound,
        )
    )
    s.say(f"raw ceiling: {rate:,.0f} claim calls/s ({taken:,} granted)")
    keys = KeySpace.activity(activity_id)
    s.rd.delete(keys.config, keys.user_counts, keys.device_counts, keys.allow_list, keys.seq, keys.events)
