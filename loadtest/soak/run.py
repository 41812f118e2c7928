"""The soak, step by step: its own Valkey (one-node cluster) and Postgres; Redis's memory at the start; a thousand
short activities and a million claims (client processes); the worker's lanes in this process until the ledger holds
every claim; this process's clock moved past the activities' end and the coupons' validity, the expiry sweep; a
sample read; the clock moved past the retention, the wallet retention and retire sweeps until nothing is left to
do, the streams trimmed; Redis's memory again; the sample read again, and the keyed claims asked again."""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from gateway import clock
from gateway.catalog.admin import AdminService
from gateway.catalog.campaign import ActivityIn, PackItem, TemplateIn
from gateway.claim.shedding import stream_lags
from gateway.devstack.pidfile import PidFile
from gateway.devstack.postgres import start_postgres, stop_postgres
from gateway.devstack.valkey import start_valkey, stop_valkey
from gateway.http.app import create_app
from gateway.migrate import migrate
from gateway.settings import Settings, load_settings
from gateway.tokens import UserIdentity
from loadtest.soak import sample
from loadtest.soak.claims import Done, Keyed, Plan, claim_process
from loadtest.soak.memory import Memory, measure
from worker.consumer import Consumer, start_consumer
from worker.trim import trim_streams

DAY = 86_400
RETENTION = DAY  # the shortest allowed: the idempotency time at its least
API_KEY = "soak-operator-key-0123456789"
SECRET = "soak-secret-soak-secret-soak-secret-0123"
SAMPLE_USERS, SAMPLE_ACTIVITIES = 100, 20
PROCESSES = 2
WAIT_SECONDS = 3600  # for the worker to persist what a step made
QUIET_SECONDS = 3.0  # for Redis to drop what closed connections held


@dataclass
class Soak:
    claims: int
    activities: int
    users: int
    workdir: Path
    say: Callable[[str], None]
    figures: dict[str, Any] = field(default_factory=dict)

    def env(self, redis_url: str, database_url: str) -> dict[str, str]:
        return {
            "CLAIMGATE_REDIS_URL": redis_url,
            "CLAIMGATE_DATABASE_URL": database_url,
            "CLAIMGATE_JWT_SECRET": SECRET,
            "CLAIMGATE_API_KEYS": f"soak:{API_KEY}",
            "CLAIMGATE_SERVICE_KEYS": "soak-service-key-0123456789",
            "CLAIMGATE_CODE_HASH_KEY": "soak-code-hash-key-0123456789-0123456789",
            "CLAIMGATE_IDEMPOTENCY_TTL": str(RETENTION),
            "CLAIMGATE_RETENTION": str(RETENTION),
            "CLAIMGATE_MAX_CLOCK_SKEW": str(10 * 365 * DAY),  # this process's clock is moved on purpose
            "CLAIMGATE_WORKER_IDLE_SLEEP": "0.02",
            "CLAIMGATE_OPS_PORT": "0",
            "CLAIMGATE_WORKER_OPS_PORT": "0",
        }


def run_soak(soak: Soak) -> dict[str, Any]:
    pidfile = PidFile(soak.workdir / "soak.pids")
    valkey = start_valkey(soak.workdir / "valkey", cluster=True, maxmemory="8gb", pidfile=pidfile)
    postgres = start_postgres(soak.workdir / "postgres", pidfile=pidfile)
    try:
        settings = load_settings(soak.env(valkey.url, postgres.url))
        asyncio.run(_soak(soak, settings))
    finally:
        stop_valkey(valkey, pidfile)
        stop_postgres(postgres, pidfile)
    return soak.figures


async def _soak(soak: Soak, settings: Settings) -> None:
    await migrate(settings.postgres.url)
    await _running(settings, seconds=3)  # a first worker makes the fixed streams' groups
    start = await _quiet_measure(settings)
    soak.figures["start"] = dataclasses.asdict(start)
    soak.say(f"Redis at the start: {start.used:,} B used, {start.keys} keys")
    consumer = await start_consumer(settings)
    lanes, stop, tasks = _lanes(consumer)
    try:
        activity_ids, t0 = await _activities(soak, consumer)
        keyed = await _claims(soak, settings, activity_ids, t0)
        await _until(soak, "every claim in the ledger", lambda: _ledger_holds(consumer, soak.claims, "TRUE"))
        await _until(soak, "every stream settled", lambda: _settled(consumer))
        soak.figures["peak"] = dataclasses.asdict(await asyncio.to_thread(measure, settings.redis.url))
        soak.say(f"Redis with every coupon: {soak.figures['peak']['used']:,} B used")
        users, sampled = sorted({k.user for k in keyed})[:SAMPLE_USERS], activity_ids[:SAMPLE_ACTIVITIES]
        async with AsyncTestClient(app=create_app(settings)) as client:
            await _expire(soak, consumer, t0)
            before = await sample.take(client, consumer.pool, SECRET, API_KEY, users, sampled)
            await _retain(soak, consumer, lanes, t0)
            after = await sample.take(client, consumer.pool, SECRET, API_KEY, users, sampled)
        soak.figures["sample"] = _compare(before, after)
        await _stopped(consumer, stop, tasks)
        end = await _quiet_measure(settings)
        soak.figures["end"] = dataclasses.asdict(end)
        soak.figures["verdict"] = _verdict(start, end)
        # Asked last: a replayed claim is delivered again (idempotent while its coupons are in Redis), and only
        # this moved clock lets a retry come after they left (the retention is never shorter than the key's time).
        soak.figures["keyed"] = await _ask_again(settings, keyed)
    finally:
        await _stopped(consumer, stop, tasks)
        clock.reset()


def _lanes(consumer: Consumer) -> tuple[list[Consumer], asyncio.Event, list[asyncio.Task[None]]]:
    """The worker's lanes running in this process, without their housekeeping: the soak runs the sweeps."""
    lanes = [dataclasses.replace(lane, housekeeping=None) for lane in consumer.lanes()]
    stop = asyncio.Event()
    return lanes, stop, [asyncio.create_task(lane.run(stop)) for lane in lanes]


async def _running(settings: Settings, *, seconds: float) -> None:
    consumer = await start_consumer(settings)
    _, stop, tasks = _lanes(consumer)
    await asyncio.sleep(seconds)
    await _stopped(consumer, stop, tasks)


async def _stopped(consumer: Consumer, stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    """The lanes stopped and the consumer's clients closed (once: a second call does nothing)."""
    if stop.is_set():
        return
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    await consumer.redis.close()
    await consumer.pool.close()


async def _quiet_measure(settings: Settings) -> Memory:
    """Redis with no client of the soak's connected (their buffers are not data), the same at start and end."""
    await asyncio.sleep(QUIET_SECONDS)
    return await asyncio.to_thread(measure, settings.redis.url)


async def _expire(soak: Soak, consumer: Consumer, t0: int) -> None:
    """Time past every activity's end and every coupon's validity: the expiry sweep, until the ledger has it."""
    chores = consumer.housekeeping
    assert chores is not None
    clock.set_to(t0 + 2 * DAY)
    expired = await _repeat(lambda: _count(chores.sweep_expired, lambda: chores.coupons_expired))
    soak.say(f"the expiry sweep expired {expired:,} coupons")
    where = "status = 'expired'"
    await _until(soak, "every expiry in the ledger", lambda: _ledger_holds(consumer, soak.claims, where))


async def _retain(soak: Soak, consumer: Consumer, lanes: list[Consumer], t0: int) -> None:
    """Time past the retention of every coupon and activity: the wallet retention and retire sweeps until a pass
    does nothing, the ledger level, the streams trimmed."""
    chores = consumer.housekeeping
    assert chores is not None
    clock.set_to(t0 + 2 * DAY + RETENTION + 3600)
    began = time.monotonic()
    archived = await _repeat(lambda: _count(chores.retain_wallets, lambda: chores.coupons_archived))
    retired = await _repeat(lambda: _retired(consumer, chores.retire_activities))
    where = "archived_at IS NOT NULL"
    await _until(soak, "every removal in the ledger", lambda: _ledger_holds(consumer, soak.claims, where))
    await _until(soak, "every stream settled", lambda: _settled(consumer))
    trimmed = await trim_streams(consumer.client, [s for lane in lanes for s in lane.streams])
    soak.figures["sweeps"] = {
        "coupons_archived": archived,
        "activities_retired": retired,
        "entries_trimmed": trimmed,
        "seconds": round(time.monotonic() - began, 1),
    }
    soak.say(f"retention: {archived:,} coupons archived, {retired} activities retired, {trimmed:,} trimmed")


async def _activities(soak: Soak, consumer: Consumer) -> tuple[list[str], int]:
    admin = AdminService(consumer.pool, consumer.runner, consumer.claims.keyspace)
    t0 = int(time.time())
    template = await admin.create_template(
        TemplateIn(name="soak", kind="cash", amount_off=100, valid_days=1), "soak", t0
    )
    per = soak.claims // soak.activities
    ids = []
    for n in range(soak.activities):
        body = ActivityIn(
            name=f"soak {n}", pack=[PackItem(template.id, 1)], starts_at=t0 - 60, ends_at=t0 + 3600, stock=per,
            per_user_limit=1,
        )  # fmt: skip
        ids.append((await admin.create_activity(body, "soak", t0)).id)
    soak.say(f"{soak.activities:,} activities of {per:,} packs each")
    return ids, t0


async def _claims(soak: Soak, settings: Settings, activity_ids: list[str], t0: int) -> list[Keyed]:
    per = soak.claims // soak.activities
    places = list(enumerate(activity_ids))
    plans = [
        Plan(
            settings.redis.url,
            settings.redis.wallet_buckets,
            settings.redis.code_buckets,
            settings.claim.idempotency_ttl_seconds,
            places[p::PROCESSES],
            per,
            soak.users,
            t0,
        )
        for p in range(PROCESSES)
    ]
    began = time.monotonic()
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(PROCESSES, mp_context=multiprocessing.get_context("spawn")) as pool:
        done: list[Done] = await asyncio.gather(
            *(loop.run_in_executor(pool, claim_process, p) for p in plans)
        )
    seconds = time.monotonic() - began
    made = sum(d.claims for d in done)
    soak.figures["claims"] = {"made": made, "seconds": round(seconds, 1), "per_second": round(made / seconds)}
    soak.say(f"{made:,} claims in {seconds:.0f} s ({made / seconds:,.0f}/s)")
    return [k for d in done for k in d.keyed]


async def _until(soak: Soak, what: str, done: Callable[[], Awaitable[bool]]) -> None:
    began = time.monotonic()
    while not await done():
        if time.monotonic() - began > WAIT_SECONDS:
            raise RuntimeError(f"not within {WAIT_SECONDS} s: {what}")
        await asyncio.sleep(1)
    soak.say(f"{what} ({time.monotonic() - began:.0f} s)")


async def _ledger_holds(consumer: Consumer, expected: int, where: str) -> bool:
    claims = await consumer.pool.fetchval("SELECT count(*) FROM claims")
    coupons = await consumer.pool.fetchval(f"SELECT count(*) FROM coupons WHERE {where}")
    return bool(claims == expected and coupons == expected)


async def _settled(consumer: Consumer) -> bool:
    await consumer.refresh_streams()
    return all(lag.total == 0 for lag in await stream_lags(consumer.redis.polls, consumer.streams))


async def _count(chore: Callable[[], Awaitable[None]], total: Callable[[], int]) -> int:
    before = total()
    await chore()
    return total() - before


async def _retired(consumer: Consumer, chore: Callable[[], Awaitable[None]]) -> int:
    before = await consumer.pool.fetchval("SELECT count(*) FROM activities WHERE retired_at IS NOT NULL")
    await chore()
    after = await consumer.pool.fetchval("SELECT count(*) FROM activities WHERE retired_at IS NOT NULL")
    return int(after - before)


async def _repeat(step: Callable[[], Awaitable[int]]) -> int:
    """A bounded sweep again and again until a pass does nothing; the total it did."""
    total = 0
    while done := await step():
        total += done
    return total


def _compare(before: sample.Snapshot, after: sample.Snapshot) -> dict[str, Any]:
    differ = {
        "wallets": sorted(u for u in before.wallets if before.wallets[u] != after.wallets.get(u)),
        "stats": sorted(a for a in before.stats if before.stats[a] != after.stats.get(a)),
        "history": sorted(c for c in before.history if before.history[c] != after.history.get(c)),
    }
    return {
        "users": len(before.wallets),
        "coupons": sum(len(items) for items in before.wallets.values()),
        "activities": len(before.stats),
        "histories": len(before.history),
        "differ": differ,
    }


async def _ask_again(settings: Settings, keyed: list[Keyed]) -> dict[str, int]:
    consumer = await start_consumer(settings)
    same = 0
    try:
        for k in keyed:
            result = await consumer.claims.claim(
                k.activity_id,
                UserIdentity(k.user, f"d-{k.user}"),
                now=int(clock.now()),
                idempotency_key=k.key,
            )
            same += result.answer == k.answer
    finally:
        await consumer.redis.close()
        await consumer.pool.close()
    return {"asked": len(keyed), "first_answer": same}


def _verdict(start: Memory, end: Memory) -> dict[str, Any]:
    growth = (end.without_expiring - start.without_expiring) / start.without_expiring
    return {"growth": round(growth, 4), "met": abs(growth) <= 0.10}
