"""No coupon without its claim (design.md): a wallet's entry about a claim's coupons that reaches the sink before
the claim waits in ``held_entries``, acknowledged, and reaches ``coupons`` with the claim; one whose claim never
comes stays out of the ledger's coupons and reconcile names it."""

from __future__ import annotations

import time

import asyncpg
import msgspec
import pytest

from gateway.events import ClaimAnswer
from gateway.keys import is_activity_stream
from gateway.tokens import UserIdentity
from tests.recovery.checkout_support import code_service, hot_config
from tests.recovery.support import KEYS, OPERATOR, new_activity
from tests.worker.conftest import drain
from tests.worker.test_sink import claim_n, make_activity
from worker import sink
from worker.consumer import Consumer
from worker.events import Entry
from worker.recovery.reconcile import Reconciler
from worker.recovery.restore import restore


async def read_all(consumer: Consumer, lane: str) -> list[Entry]:
    """Every entry of the activity streams (``lane`` "activity") or of the others, read by the group."""
    await consumer.refresh_streams()
    streams = [s for s in consumer.streams if is_activity_stream(s) == (lane == "activity")]
    entries: list[Entry] = []
    for stream in streams:
        for _, messages in await consumer.client.xreadgroup(stream, consumer.name, {stream: ">"}) or []:
            entries.extend(Entry(stream, entry_id, fields) for entry_id, fields in messages)
    return entries


async def counts(pool: asyncpg.Pool) -> dict[str, int]:
    return {
        t: await pool.fetchval(f"SELECT count(*) FROM {t}") for t in ("claims", "coupons", "held_entries")
    }


async def test_a_delivery_committed_before_its_claim_waits_for_it(consumer: Consumer) -> None:
    activity_id = await make_activity(consumer)
    await claim_n(consumer.claims, activity_id, 3)
    wallet_entries = [e for e in await read_all(consumer, "other") if e.type == "delivered"]
    activity_entries = await read_all(consumer, "activity")
    assert len(wallet_entries) == 3

    async with consumer.pool.acquire() as conn:
        written = await sink.write(conn, wallet_entries)  # the wallet lane first
    assert written.conflicts == set() and written.failed == {}
    assert await counts(consumer.pool) == {"claims": 0, "coupons": 0, "held_entries": 3}
    wallet_marks = await consumer.pool.fetchval(
        "SELECT count(*) FROM partition_marks WHERE partition LIKE '{w:%'"
    )
    assert wallet_marks >= 1, "a held entry's seq counts toward its partition's mark"

    async with consumer.pool.acquire() as conn:
        written = await sink.write(conn, activity_entries)  # then the claims: what waited comes with them
    assert await counts(consumer.pool) == {"claims": 3, "coupons": 6, "held_entries": 0}
    assert len(written.delivered) == 3, "the wallet holds what waited: nothing to deliver again"
    claims_ids = await consumer.pool.fetch("SELECT DISTINCT claim_id FROM coupons")
    assert len(claims_ids) == 3


async def test_a_claim_committed_unseen_by_the_lane_that_held_is_applied_by_the_next_batch(
    consumer: Consumer,
) -> None:
    """Two lanes commit a claim and its delivery at the same instant, each not seeing the other: the
    delivery is held although its claim is committed; the next transaction of either lane applies it."""
    await hold_then_commit_claims_unseen(consumer)
    assert await counts(consumer.pool) == {"claims": 1, "coupons": 0, "held_entries": 1}
    async with consumer.pool.acquire() as conn:
        assert await sink.release_held(conn) == 1
    assert await counts(consumer.pool) == {"claims": 1, "coupons": 2, "held_entries": 0}


async def test_a_checkout_change_of_an_unclaimed_coupon_is_held_too(consumer: Consumer) -> None:
    activity_id = await make_activity(consumer)
    await claim_n(consumer.claims, activity_id, 1)
    delivered = next(e for e in await read_all(consumer, "other") if e.type == "delivered")
    coupon_id = msgspec.json.decode(delivered.fields["answer"], type=ClaimAnswer).coupons[0].coupon_id
    locked = Entry(
        delivered.stream,
        "99999999999999-0",
        {
            "type": "locked",
            "id": "lock-event",
            "seq": "999",
            "at": str(int(time.time())),
            "user": delivered.fields["user"],
            "activity": activity_id,
            "coupon": coupon_id,
            "template": "t",
            "claim": msgspec.json.decode(delivered.fields["answer"], type=ClaimAnswer).claim_id,
            "valid_from": "0",
            "valid_until": "9999999999",
            "status": "locked",
            "version": "2",
            "order": "o-1",
            "order_status": "locked",
            "order_version": "1",
            "discount": "100",
            "split": "[]",
            "locked_until": "9999999999",
            "returned": "",
        },
    )
    async with consumer.pool.acquire() as conn:
        await sink.write(conn, [locked])
    assert await counts(consumer.pool) == {"claims": 0, "coupons": 0, "held_entries": 1}
    assert await consumer.pool.fetchval("SELECT count(*) FROM orders") == 0


@pytest.mark.parametrize("lanes", [1, 2])
async def test_the_worker_leaves_nothing_held_when_every_claim_arrives(
    consumer: Consumer, lanes: int
) -> None:
    activity_id = await make_activity(consumer, stock=10)
    await claim_n(consumer.claims, activity_id, 8)
    if lanes == 1:
        await drain(consumer)
    else:
        other, first = consumer.lanes()[1], consumer.lanes()[0]
        await drain(other)  # every delivery before any claim
        await drain(first)
    assert await counts(consumer.pool) == {"claims": 8, "coupons": 16, "held_entries": 0}


async def test_reconcile_names_coupons_without_a_claim_and_entries_held_too_long(consumer: Consumer) -> None:
    activity_id = await make_activity(consumer)
    await claim_n(consumer.claims, activity_id, 2)
    delivered = [e for e in await read_all(consumer, "other") if e.type == "delivered"]
    await read_all(consumer, "activity")  # the claims' entries read and never acknowledged: as if lost
    first, second = delivered
    async with consumer.pool.acquire() as conn:
        await sink.write(conn, [first, second])
        await conn.execute(
            "UPDATE held_entries SET held_at = held_at - 3600 WHERE entry_id = $1", first.entry_id
        )
        # A coupon the ledger holds without its claim (written before holding existed).
        await conn.execute(
            "INSERT INTO coupons (coupon_id, user_id, activity_id, template_id, claim_id, status, version,"
            " valid_from, valid_until, updated_at, partition) VALUES ('orphan', $1, $2, 't', 'no-such-claim',"
            " 'available', 1, 0, 1, 0, $3)",
            first.fields["user"],
            activity_id,
            first.partition,
        )
    report = await Reconciler(consumer.client, consumer.runner, consumer.pool, consumer.claims.keyspace).run(
        [first.partition]
    )
    ledger = sorted((d.key, d.field, d.ledger) for d in report.differences if d.what == "ledger")
    first_claim = msgspec.json.decode(first.fields["answer"], type=ClaimAnswer).claim_id
    assert ledger == [
        ("coupons", "orphan", "no-such-claim"),
        ("held_entries", f"{first.stream} {first.entry_id}", first_claim),  # the second is not held long yet
    ], report.lines()


async def test_a_code_redeems_delivery_waits_for_its_code_redeemed(consumer: Consumer) -> None:
    """The same two-step across partitions: ``code_redeemed`` in the code's bucket, ``delivered`` in the
    wallet. The delivery reaching the ledger first waits; the redeem brings it in."""
    activity = await new_activity(consumer, stock=5)
    codes = code_service(consumer)
    hot = await hot_config(consumer, KEYS.activity(activity.id))
    batch = await codes.make_batch(activity.id, hot, 2, OPERATOR, now=int(time.time()))
    await drain(consumer)  # the activity and the batch
    coder = UserIdentity("coder", "cdev")
    await codes.redeem(coder, batch.codes[0], now=int(time.time()), idempotency_key=None, blocked=False)
    entries = await read_all(consumer, "other")  # the code's bucket and the wallet: the same lane
    wallet = [e for e in entries if e.type == "delivered"]
    redeemed = [e for e in entries if e.type == "code_redeemed"]
    assert len(wallet) == 1 and len(redeemed) == 1
    async with consumer.pool.acquire() as conn:
        await sink.write(conn, wallet)
        assert await counts(consumer.pool) == {"claims": 0, "coupons": 0, "held_entries": 1}
        await sink.write(conn, redeemed)
    pack = len(msgspec.json.decode(wallet[0].fields["answer"], type=ClaimAnswer).coupons)
    assert await counts(consumer.pool) == {"claims": 1, "coupons": pack, "held_entries": 0}


async def hold_then_commit_claims_unseen(
    consumer: Consumer, users: int = 1
) -> tuple[list[Entry], list[Entry]]:
    """Deliveries held, then their claims committed by a transaction that did not see them (two lanes racing):
    the entries wait although their claims are in the ledger. (delivered, claimed) entries."""
    activity_id = await make_activity(consumer)
    await claim_n(consumer.claims, activity_id, users)
    delivered = [e for e in await read_all(consumer, "other") if e.type == "delivered"]
    claimed = [e for e in await read_all(consumer, "activity") if e.type == "claimed"]
    async with consumer.pool.acquire() as conn:
        await sink.write(conn, delivered)
        await conn.execute("ALTER TABLE held_entries RENAME TO held_entries_away")
        await conn.execute("CREATE TABLE held_entries (LIKE held_entries_away INCLUDING ALL)")
        try:
            await sink.write(conn, claimed)
        finally:
            await conn.execute("DROP TABLE held_entries")
            await conn.execute("ALTER TABLE held_entries_away RENAME TO held_entries")
    return delivered, claimed


async def test_a_held_entry_postgres_refuses_once_its_claim_comes_is_a_conflict_not_a_stall(
    consumer: Consumer,
) -> None:
    activity_id = await make_activity(consumer)
    await claim_n(consumer.claims, activity_id, 1)
    delivered = next(e for e in await read_all(consumer, "other") if e.type == "delivered")
    claimed = [e for e in await read_all(consumer, "activity") if e.type == "claimed"]
    poison = Entry(delivered.stream, delivered.entry_id, {**delivered.fields, "version": str(2**40)})
    async with consumer.pool.acquire() as conn:
        await sink.write(conn, [poison])  # held: its version fits no int column, found only when applied
        assert await counts(consumer.pool) == {"claims": 0, "coupons": 0, "held_entries": 1}
        written = await sink.write(conn, claimed)  # the claim comes: its batch commits all the same
        assert written.failed == {} and written.conflicts == set()
        assert await sink.release_held(conn) == 0
    assert await counts(consumer.pool) == {"claims": 1, "coupons": 0, "held_entries": 0}
    reasons = await consumer.pool.fetch("SELECT entry_id, reason FROM conflicts")
    assert [(r["entry_id"], r["reason"][:41]) for r in reasons] == [
        (poison.entry_id, "refused by Postgres when its claim came: ")
    ]


async def test_restore_applies_what_waited_for_a_committed_claim_before_it_rebuilds_a_wallet(
    consumer: Consumer,
) -> None:
    delivered, _ = await hold_then_commit_claims_unseen(consumer)
    assert await counts(consumer.pool) == {"claims": 1, "coupons": 0, "held_entries": 1}
    answer = msgspec.json.decode(delivered[0].fields["answer"], type=ClaimAnswer)
    wallet = consumer.claims.keyspace.wallet(delivered[0].fields["user"])
    await consumer.client.delete(wallet.coupons, wallet.user_index(delivered[0].fields["user"]))
    await consumer.client.set(wallet.seq, 0)  # Redis lost the delivery: the wallet is behind its mark
    for stream in consumer.streams:  # the worker trimmed what it persisted: restore's drains find nothing
        await consumer.client.xtrim(stream, maxlen=0)

    await restore(
        consumer.client,
        consumer.pool,
        consumer.claims.keyspace,
        idempotency_ttl=consumer.settings.claim.idempotency_ttl_seconds,
    )
    held = await consumer.client.hgetall(wallet.coupons)
    assert sorted(held) == sorted(c.coupon_id for c in answer.coupons), "restored without its coupons"
    assert await counts(consumer.pool) == {"claims": 1, "coupons": 2, "held_entries": 0}
