"""Opens or keeps closed the fence by comparing Redis's per-partition ``seq`` with the ledger's marks.

A partition whose ``seq`` in Redis is below ``partition_marks`` lost writes the ledger already holds (a Redis
that restarted from an older AOF, or a failover to a lagging replica): selling from it could sell a unit twice.

A check that passes records in Redis (``FENCE_CHECKED``) the lives of the primaries it vouched for: each one's
run id and replication id (a restart brings a new run id, a replica promoted a new replication id). A process
that cannot reach the ledger, and finds its primaries' lives there, opens its fence: within one life a server
loses nothing it acknowledged, so what was level with the ledger then still holds everything the ledger does. A
gateway started while Postgres is down thus serves, as long as Redis neither restarted nor failed over
meanwhile. A record restored with an older Redis names only lives that are over. When the ledger answers, it is
always the judge.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import asyncpg
from redis.asyncio import RedisCluster

from gateway import clock
from gateway.background import cancel_requested
from gateway.keys import FENCE_CHECKED, ActivityKeys, Partition, is_activity_partition
from gateway.scripts.fence import Fence
from gateway.scripts.runner import RedisClient, drop_idle_connections

log = logging.getLogger(__name__)
CLOCK_CHECK_SECONDS = 10.0


async def redis_run_ids(client: RedisClient) -> frozenset[str]:
    """The run id of every primary: a restart or a failover brings a new one."""
    if isinstance(client, RedisCluster):
        infos: dict[str, Any] = await client.info("server", target_nodes=RedisCluster.PRIMARIES)
        if "run_id" in infos:  # redis-py answers one node's info unwrapped
            return frozenset({str(infos["run_id"])})
        return frozenset(str(info["run_id"]) for info in infos.values())
    info = await client.info("server")
    return frozenset({str(info["run_id"])})


async def partitions_behind(client: RedisClient, pool: asyncpg.Pool) -> list[str]:
    """Partitions whose ``seq`` in Redis is below the ledger's mark. A retired activity's partition has no
    ``seq``: its marker (``{a:X}:retired``, the seq when it left Redis) stands for it, so a partition retired
    level with the ledger is not behind, and one whose later changes Redis lost (revived, then rolled back to the
    marker) is."""
    marks = await pool.fetch("SELECT partition, seq FROM partition_marks")
    if not marks:
        return []
    pipe = client.pipeline(transaction=False)
    for row in marks:
        pipe.get(Partition(row["partition"]).seq)
    seqs = await pipe.execute()
    behind = [
        (row["partition"], int(row["seq"]))
        for row, seq in zip(marks, seqs, strict=True)
        if int(seq or 0) < row["seq"]
    ]
    activities = [(partition, mark) for partition, mark in behind if is_activity_partition(partition)]
    if not activities:
        return [partition for partition, _ in behind]
    pipe = client.pipeline(transaction=False)
    for partition, _ in activities:
        pipe.get(ActivityKeys(partition).retired)
    retired = {
        partition
        for (partition, mark), marker in zip(activities, await pipe.execute(), strict=True)
        if marker is not None and int(marker) >= mark
    }
    return [partition for partition, _ in behind if partition not in retired]


async def check(
    client: RedisClient, pool: asyncpg.Pool, fence: Fence, *, scripts: RedisClient | None = None
) -> None:
    """``client`` is a control client (no run-id guard): this is what clears the guard. ``scripts``, the
    script client, drops its idle connections when the fence opens on a Redis that restarted."""
    run_ids = await redis_run_ids(client)
    if fence.level and run_ids <= fence.verified:
        return
    restarted = bool(fence.verified) and not run_ids <= fence.verified
    fence.suspect(f"Redis {', '.join(sorted(run_ids))} not yet checked against the ledger")
    lives = await primary_lives(client)
    try:
        behind = await partitions_behind(client, pool)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        if not lives <= await checked_lives(client):
            fence.close(f"the ledger is unreachable to check Redis ({exc.__class__.__name__})")
            return
        log.warning(
            "the ledger is unreachable (%r); Redis's primaries are as another process checked them", exc
        )
    else:
        if behind:
            shown = ", ".join(behind[:5]) + (" ..." if len(behind) > 5 else "")
            fence.close(f"Redis is behind the ledger in {len(behind)} partition(s): {shown}; run restore")
            log.error("fence stays closed: %s", fence.reason)
            return
        await client.set(FENCE_CHECKED, ",".join(sorted(lives)))
    if restarted and scripts is not None:
        await drop_idle_connections(scripts)
    fence.open(run_ids)


async def primary_lives(client: RedisClient) -> frozenset[str]:
    """Each primary's life as ``<run id>/<replication id>``: a restart brings a new run id, a replica promoted
    keeps its run id but starts a new replication id. Within one life a server loses no write it acknowledged."""
    if isinstance(client, RedisCluster):
        servers: Any = await client.info("server", target_nodes=RedisCluster.PRIMARIES)
        replication: Any = await client.info("replication", target_nodes=RedisCluster.PRIMARIES)
        if "run_id" in servers:  # redis-py answers one node's info unwrapped
            return frozenset({f"{servers['run_id']}/{replication['master_replid']}"})
        return frozenset(
            f"{servers[node]['run_id']}/{replication[node]['master_replid']}" for node in servers
        )
    server, replication = await client.info("server"), await client.info("replication")
    return frozenset({f"{server['run_id']}/{replication['master_replid']}"})


async def checked_lives(client: RedisClient) -> frozenset[str]:
    """The primaries' lives some process last found level with the ledger."""
    raw = await client.get(FENCE_CHECKED)
    return frozenset(str(raw).split(",")) if raw else frozenset()


async def check_clock(client: RedisClient, fence: Fence, max_skew: float) -> float | None:
    """Measure this process's clock against Redis's; distrust it (the fence closes) beyond ``max_skew``. A
    measure whose round trip alone took longer than that (a loop stalled under load) says nothing: ignored
    (None), the verdict stays as it was."""
    off, round_trip = await clock.skew(client)
    if round_trip > max_skew:
        log.info("clock check skipped: Redis's TIME took %.3f s to come back", round_trip)
        return None
    if abs(off) > max_skew:
        problem = (
            f"this process's clock is {off:+.3f} s from Redis's (at most {max_skew:g} s allowed): fix its time"
            " sync (NTP)"
        )
        if not fence.clock_problem:
            log.error("state changes paused: %s", problem)
        fence.distrust_clock(problem)
    elif fence.clock_problem:
        log.warning("clock back within %g s of Redis's (%+.3f s): state changes resume", max_skew, off)
        fence.distrust_clock("")
    return off


async def watch(
    client: RedisClient,
    pool: asyncpg.Pool,
    fence: Fence,
    interval: float = 1.0,
    *,
    scripts: RedisClient | None = None,
    max_skew: float | None = None,
) -> None:
    """Re-check whenever Redis's run id changes; keeps the fence closed until the check passes. With
    ``max_skew``, the clock is checked too, every ``CLOCK_CHECK_SECONDS``."""
    clock_checked = 0.0
    while not cancel_requested():
        try:
            await check(client, pool, fence, scripts=scripts)
            if max_skew is not None and time.monotonic() - clock_checked >= CLOCK_CHECK_SECONDS:
                clock_checked = time.monotonic()
                await check_clock(client, fence, max_skew)
        except Exception as exc:  # Redis unreachable: scripts fail on their own; check again next round
            log.warning("fence check failed: %s", exc)
        await asyncio.sleep(interval)
