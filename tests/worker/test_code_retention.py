"""The code buckets' retention sweep through the worker: once the retention has passed since a batch's window
ended, its codes (redeemed ones' tombstones too) and its record leave every code bucket, the ledger records
when (``code_batches.retired_at``), reconcile expects Redis without them and restore does not bring them back;
a batch whose window ends later stays whole, and so do the redeemed counters. A pass cut short, or postponed by a
fenced Redis, is finished by the next. Time is the processes' one clock (``gateway.clock``), moved."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import pytest

from gateway import clock
from gateway.codes.retention import CodeRetention, Retired
from gateway.keys import CodeKeys
from gateway.scripts.calls import codes as calls
from gateway.tokens import UserIdentity
from tests.recovery.checkout_support import code_service, hot_config
from tests.recovery.support import KEYS, OPERATOR, new_activity, reconciler
from tests.recovery.test_restore import empty_redis, restore_all
from tests.worker.conftest import drain
from worker.consumer import Consumer
from worker.housekeeping import Housekeeping

pytestmark = pytest.mark.usefixtures("moved_clock")
BUCKETS = [KEYS.code_of_bucket(n) for n in range(KEYS.code_buckets)]


@dataclass
class Made:
    batch_id: str
    ends_at: int
    hashes: dict[str, str]  # code hash -> its bucket's tag, as the ledger holds them
    activity_id: str


async def made(consumer: Consumer, *, count: int, redeemers: int, starts_in: int = 0) -> Made:
    """An activity (open ``starts_in`` seconds from now, for an hour) and a batch of ``count`` codes, the first
    ``redeemers`` redeemed (the first with an Idempotency-Key)."""
    now = int(time.time())
    activity = await new_activity(consumer, stock=20, starts_at=now - 5 + starts_in)
    codes = code_service(consumer)
    batch = await codes.make_batch(
        activity.id, await hot_config(consumer, KEYS.activity(activity.id)), count, OPERATOR, now=now
    )
    for n, code in enumerate(batch.codes[:redeemers]):
        await codes.redeem(
            UserIdentity(f"coder{n}", f"cdev{n}"),
            code,
            now=now,
            idempotency_key="k" if n == 0 else None,
            blocked=False,
        )
    rows = await consumer.pool.fetch(
        "SELECT code_hash, partition FROM codes WHERE batch_id = $1", batch.batch_id
    )
    ends_at = await consumer.pool.fetchval(
        "SELECT ends_at FROM code_batches WHERE batch_id = $1", batch.batch_id
    )
    return Made(batch.batch_id, ends_at, {r["code_hash"]: r["partition"] for r in rows}, activity.id)


async def held(consumer: Consumer, batch: Made) -> tuple[set[str], set[str]]:
    """What Redis holds of the batch: its codes (in any bucket), and the buckets holding its record."""
    codes: set[str] = set()
    records: set[str] = set()
    for bucket in BUCKETS:
        found = await consumer.client.hmget(bucket.codes, sorted(batch.hashes))
        codes |= {h for h, record in zip(sorted(batch.hashes), found, strict=True) if record is not None}
        if await consumer.client.hexists(bucket.batches, batch.batch_id):
            records.add(bucket.tag)
    return codes, records


async def redeemed_counts(consumer: Consumer, activity_id: str) -> int:
    return sum([int(await consumer.client.hget(b.counters, activity_id) or 0) for b in BUCKETS])


async def retired_at(consumer: Consumer, batch: Made) -> int | None:
    at: int | None = await consumer.pool.fetchval(
        "SELECT retired_at FROM code_batches WHERE batch_id = $1", batch.batch_id
    )
    return at


def chores(consumer: Consumer) -> Housekeeping:
    assert consumer.housekeeping is not None and consumer.housekeeping.codes is not None
    return consumer.housekeeping


async def test_a_batch_leaves_redis_once_its_window_ended_the_retention_ago(consumer: Consumer) -> None:
    old = await made(consumer, count=6, redeemers=2)
    later = await made(consumer, count=3, redeemers=0, starts_in=86_400)  # its window ends a day later
    assert len(set(old.hashes.values())) > 1  # the batch spans buckets
    await drain(consumer)
    retention = consumer.settings.retention.seconds
    assert (await held(consumer, old))[0] == set(old.hashes)
    housekeeping = chores(consumer)

    clock.set_to(old.ends_at + retention - 1)  # the last second of the tombstones' promise
    await housekeeping.retire_codes()
    assert (housekeeping.batches_retired, housekeeping.codes_retired) == (0, 0)
    assert await held(consumer, old) == (set(old.hashes), set(old.hashes.values()))

    clock.set_to(old.ends_at + retention)
    await housekeeping.retire_codes()

    assert (housekeeping.batches_retired, housekeeping.codes_retired) == (1, 6)
    assert await held(consumer, old) == (set(), set())  # redeemed or not, every code; every record
    assert await held(consumer, later) == (set(later.hashes), set(later.hashes.values()))
    assert await redeemed_counts(consumer, old.activity_id) == 2  # the activity's figures stay
    await drain(consumer)
    at = old.ends_at + retention
    assert at <= (await retired_at(consumer, old) or 0) <= at + 5
    assert await retired_at(consumer, later) is None
    for bucket in BUCKETS:  # every codes_retired reached the ledger: its marks are Redis's seq
        mark = await consumer.pool.fetchval(
            "SELECT seq FROM partition_marks WHERE partition = $1", bucket.tag
        )
        assert (mark or 0) == int(await consumer.client.get(bucket.seq) or 0), bucket.tag
    assert await consumer.pool.fetchval("SELECT count(*) FROM conflicts") == 0

    await housekeeping.retire_codes()  # nothing left to do
    assert (housekeeping.batches_retired, housekeeping.codes_retired) == (1, 6)
    assert (await reconciler(consumer).run()).differences == []

    await empty_redis(consumer)
    await restore_all(consumer)

    assert await held(consumer, old) == (set(), set())  # not brought back
    assert await held(consumer, later) == (set(later.hashes), set(later.hashes.values()))
    assert await redeemed_counts(consumer, old.activity_id) == 2
    assert (await reconciler(consumer).run()).differences == []

    # Redis holding a retired batch's code is a difference: reconcile reports it.
    some_hash, tag = next(iter(old.hashes.items()))
    await consumer.client.hset(CodeKeys(tag).codes, some_hash, f'{{"batch":"{old.batch_id}"}}')
    assert [d.what for d in (await reconciler(consumer).run()).differences] == ["code"]


async def test_a_pass_cut_short_or_postponed_is_finished_by_the_next(consumer: Consumer) -> None:
    batch = await made(consumer, count=8, redeemers=1)
    await drain(consumer)
    now = batch.ends_at + consumer.settings.retention.seconds
    clock.set_to(now)
    housekeeping = chores(consumer)
    assert housekeeping.codes is not None
    housekeeping.codes.chunk = 1  # a call per code: the record leaves with each bucket's last
    # One bucket done, then the worker died before the others and before the ledger heard of it.
    tag = sorted(set(batch.hashes.values()))[0]
    in_tag = sorted(h for h, t in batch.hashes.items() if t == tag)
    keys = calls.RetireCodesKeys.of(CodeKeys(tag))
    reply = await calls.retire_codes(
        consumer.runner,
        keys,
        now=now,
        event_id="e1",
        cutoff=batch.ends_at,
        batch_id=batch.batch_id,
        last=True,
        hashes=in_tag,
    )
    assert reply == ["ok", len(in_tag)]
    assert await retired_at(consumer, batch) is None
    codes, records = await held(consumer, batch)
    assert codes == set(batch.hashes) - set(in_tag) and tag not in records

    consumer.runner.fence.distrust_clock("a test's fence")  # fenced: postponed, nothing recorded
    await housekeeping.retire_codes()
    assert (housekeeping.batches_retired, await retired_at(consumer, batch)) == (0, None)
    assert (await held(consumer, batch))[0] == codes
    consumer.runner.fence.distrust_clock("")

    await housekeeping.retire_codes()

    assert (housekeeping.batches_retired, housekeeping.codes_retired) == (1, 8 - len(in_tag))
    assert await held(consumer, batch) == (set(), set())
    assert now <= (await retired_at(consumer, batch) or 0) <= now + 5
    await drain(consumer)
    assert (await reconciler(consumer).run()).differences == []


async def test_a_batch_a_bucket_refuses_stays_and_holds_up_no_other(
    consumer: Consumer, caplog: pytest.LogCaptureFixture
) -> None:
    """A bucket whose record of the batch ends after the cutoff (Redis and the ledger disagree) keeps it; the
    ledger does not mark it retired, and the sweep goes on to the batches after it."""
    first = await made(consumer, count=4, redeemers=0)
    second = await made(consumer, count=4, redeemers=0)
    tag = sorted(set(first.hashes.values()))[0]
    record = json.loads(str(await consumer.client.hget(CodeKeys(tag).batches, first.batch_id)))
    record["ends_at"] += 10 * 86_400
    await consumer.client.hset(CodeKeys(tag).batches, first.batch_id, json.dumps(record))
    now = max(first.ends_at, second.ends_at) + consumer.settings.retention.seconds
    sweep = CodeRetention(consumer.runner, consumer.pool, consumer.settings.retention.seconds, batches=1)

    assert await sweep.sweep(now=now) == Retired()
    assert f"code batch {first.batch_id} not retired" in caplog.text
    assert await sweep.sweep(now=now) == Retired(1, 4)

    assert await retired_at(consumer, first) is None
    assert await retired_at(consumer, second) == now
    assert await held(consumer, second) == (set(), set())
    codes, records = await held(consumer, first)
    assert records == {tag} and codes == {h for h, t in first.hashes.items() if t == tag}
