"""The worker against real Redis and Postgres: each event once, safe order, nothing acked before commit."""

from __future__ import annotations

import time

import asyncpg
import pytest

from gateway.catalog.admin import AdminService
from gateway.catalog.campaign import ActivityIn, PackItem, TemplateIn
from gateway.claim.service import ClaimService
from gateway.keys import KeySpace
from gateway.scripts.calls import claim as calls
from gateway.tokens import UserIdentity
from tests.worker.conftest import drain
from worker import sink
from worker.consumer import Consumer
from worker.events import Entry


async def make_activity(consumer: Consumer, stock: int = 10, per_user_limit: int = 1) -> str:
    admin = AdminService(consumer.pool, consumer.runner, KeySpace(8, 4))
    now = int(time.time())
    template = await admin.create_template(
        TemplateIn(name="t", kind="cash", amount_off=100, valid_days=3), "alice", now
    )
    activity = await admin.create_activity(
        ActivityIn(
            name="a",
            pack=[PackItem(template.id, 2)],
            starts_at=now - 5,
            ends_at=now + 600,
            stock=stock,
            per_user_limit=per_user_limit,
        ),
        "alice",
        now,
    )
    return activity.id


async def claim_n(claims: ClaimService, activity_id: str, users: int) -> list[str]:
    now = int(time.time())
    answers = []
    for i in range(users):
        result = await claims.claim(activity_id, UserIdentity(f"u{i}", f"d{i}"), now=now)
        answers.append(result.answer)
    return answers


async def table_counts(pool: asyncpg.Pool) -> dict[str, int]:
    return {
        t: await pool.fetchval(f"SELECT count(*) FROM {t}")
        for t in ("claims", "coupons", "coupon_events", "audit")
    }


async def pending(consumer: Consumer) -> int:
    total = 0
    for stream in consumer.streams:
        info = await consumer.client.xpending(stream, stream)
        total += info["pending"]
    return total


async def test_claims_reach_postgres_once(consumer: Consumer) -> None:
    activity_id = await make_activity(consumer)
    await claim_n(consumer.claims, activity_id, 3)
    persisted = await drain(consumer)
    # 1 activity_created + 3 claimed + 3 delivered
    assert persisted == 7
    assert await table_counts(consumer.pool) == {"claims": 3, "coupons": 6, "coupon_events": 6, "audit": 1}
    assert await pending(consumer) == 0
    marks = dict(await consumer.pool.fetch("SELECT partition, seq FROM partition_marks"))
    assert marks[f"{{a:{activity_id}}}"] == 4  # created + 3 claims


async def test_batch_delivered_twice_writes_each_event_once(consumer: Consumer) -> None:
    activity_id = await make_activity(consumer)
    await claim_n(consumer.claims, activity_id, 4)
    await consumer.refresh_streams()
    entries = await consumer.read()
    assert len(entries) == 9
    async with consumer.pool.acquire() as conn:
        await sink.apply(conn, entries)
        before = await table_counts(consumer.pool)
        await sink.apply(conn, entries)  # the same batch again, as after a crash between COMMIT and XACK
        await sink.apply(conn, list(reversed(entries)))
    assert (
        await table_counts(consumer.pool)
        == before
        == {"claims": 4, "coupons": 8, "coupon_events": 8, "audit": 1}
    )
    # Redelivery through Redis too: never acked, read again from the pending list, persisted once.
    consumer.reread_pending = True
    assert await drain(consumer) == 9
    assert await table_counts(consumer.pool) == before


def coupon_entry(coupon_id: str, version: int, at: int, event_id: str) -> Entry:
    claim_id, _, _ = coupon_id.partition(".")
    answer = (
        f'{{"claim_id":"{claim_id}","coupons":[{{"coupon_id":"{coupon_id}","template_id":"t",'
        f'"valid_from":1,"valid_until":2}}]}}'
    )
    return Entry(
        "{w:0}:events",
        f"{at}-0",
        {
            "type": "delivered",
            "id": event_id,
            "seq": str(version),
            "at": str(at),
            "activity": "a",
            "claim_id": claim_id,
            "user": "u",
            "version": str(version),
            "answer": answer,
        },
    )


async def ledger_holds_claims(db: asyncpg.Pool, *claim_ids: str) -> None:
    """Claims in the ledger, so events about their coupons are applied rather than held for them."""
    await db.executemany(
        "INSERT INTO claims (claim_id, activity_id, user_id, device_id, channel, mode, answer, claimed_at,"
        " event_id, partition, seq) VALUES ($1, 'a', 'u', 'd', '', 'claim', '{}', 0, $1, '{a:a}', 1)",
        [(claim_id,) for claim_id in claim_ids],
    )


async def test_a_late_old_event_never_overwrites_a_newer_state(db: asyncpg.Pool) -> None:
    newer, older = coupon_entry("c1.1", 2, 200, "e2"), coupon_entry("c1.1", 1, 100, "e1")
    await ledger_holds_claims(db, "c1")
    async with db.acquire() as conn:
        await sink.apply(conn, [newer, older])  # out of order inside one batch
        await sink.apply(conn, [older])  # and a late old one in a later batch
    row = await db.fetchrow("SELECT version, updated_at FROM coupons WHERE coupon_id = 'c1.1'")
    assert (row["version"], row["updated_at"]) == (2, 200)
    history = await db.fetch("SELECT version, event_id FROM coupon_events ORDER BY version")
    assert [(r["version"], r["event_id"]) for r in history] == [(1, "e1"), (2, "e2")]
    assert await db.fetchval("SELECT seq FROM partition_marks WHERE partition = '{w:0}'") == 2


async def test_an_undecodable_entry_fails_alone(db: asyncpg.Pool) -> None:
    good = coupon_entry("c2.1", 1, 100, "e1")
    broken = Entry("{w:1}:events", "1-0", {"type": "delivered", "id": "e9", "seq": "5", "answer": "not json"})
    unknown = Entry("{w:1}:events", "2-0", {"type": "teleported", "id": "e10", "seq": "6"})
    await ledger_holds_claims(db, "c2")
    async with db.acquire() as conn:
        with pytest.raises(sink.EntryFault):
            await sink.apply(conn, [good, broken, unknown])
        assert await db.fetchval("SELECT count(*) FROM coupons") == 0  # the batch wrote nothing
        failed = (await sink.apply_one_by_one(conn, [good, broken, unknown])).failed
    assert set(failed) == {("{w:1}:events", "1-0"), ("{w:1}:events", "2-0")}
    assert "unknown event type" in failed["{w:1}:events", "2-0"]
    assert await db.fetchval("SELECT count(*) FROM coupons") == 1  # the good one is written


async def test_postgres_unreachable_acks_nothing(consumer: Consumer) -> None:
    activity_id = await make_activity(consumer)
    await claim_n(consumer.claims, activity_id, 2)
    await consumer.refresh_streams()
    good_pool = consumer.pool
    consumer.pool = await asyncpg.create_pool(
        "postgresql://nobody@127.0.0.1:1/none", min_size=0, max_size=1, timeout=1
    )
    try:
        with pytest.raises(OSError):
            await consumer.step()
        with pytest.raises(OSError):
            await consumer.step()
        assert await pending(consumer) == 5  # read, not acknowledged
        assert consumer.reread_pending
    finally:
        await consumer.pool.close()
        consumer.pool = good_pool
    assert await table_counts(consumer.pool) == {"claims": 0, "coupons": 0, "coupon_events": 0, "audit": 0}
    assert await drain(consumer) == 5
    assert await pending(consumer) == 0
    assert (await table_counts(consumer.pool))["claims"] == 2


async def claim_only(consumer: Consumer, activity_id: str, user: str, claim_id: str) -> None:
    """The gateway died between the two scripts: only ``claim`` ran, never ``deliver``."""
    reply = await calls.claim(
        consumer.runner,
        calls.ClaimKeys.of(KeySpace(8, 4).activity(activity_id)),
        now=int(time.time()),
        activity_id=activity_id,
        user_id=user,
        device_id=f"dev-{user}",
        channel="",
        blocked=False,
        idem_key="",
        body_hash="0" * 32,
        idem_ttl=90000,
        claim_id=claim_id,
        event_id=f"event-{claim_id}",
        reg=None,
        orders=None,
        tags=(),
        mode="claim",
        operator="",
    )
    assert reply[0] == "ok"


async def test_worker_delivers_a_claim_whose_deliver_never_ran(consumer: Consumer) -> None:
    activity_id = await make_activity(consumer)
    keyspace = KeySpace(8, 4)
    await claim_only(consumer, activity_id, "lost-user", "claim1")
    wallet = keyspace.wallet("lost-user")
    assert await consumer.client.zcard(wallet.user_index("lost-user")) == 0
    await drain(consumer)
    assert await consumer.client.zrange(wallet.user_index("lost-user"), 0, -1) == ["claim1.1", "claim1.2"]
    rows = await consumer.pool.fetch("SELECT coupon_id, status FROM coupons WHERE user_id = 'lost-user'")
    assert sorted((r["coupon_id"], r["status"]) for r in rows) == [
        ("claim1.1", "available"),
        ("claim1.2", "available"),
    ]


async def test_claims_whose_coupons_the_ledger_holds_are_not_delivered_again(
    consumer: Consumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway delivered three claims (their `delivered` events are in the wallets' streams); a fourth
    claim's deliver never ran. The worker delivers only the fourth."""
    activity_id = await make_activity(consumer)
    await claim_n(consumer.claims, activity_id, 3)
    await claim_only(consumer, activity_id, "late", "claim-late")
    delivered: list[str] = []
    deliver = consumer.claims.deliver

    async def counted(user_id: str, activity: str, answer: str, *, now: int) -> object:
        delivered.append(user_id)
        return await deliver(user_id, activity, answer, now=now)

    monkeypatch.setattr(consumer.claims, "deliver", counted)
    await drain(consumer)
    assert delivered == ["late"]
    assert (await table_counts(consumer.pool))["coupons"] == 8  # 4 claims x 2 coupons
    late = KeySpace(8, 4).wallet("late")
    assert await consumer.client.zrange(late.user_index("late"), 0, -1) == ["claim-late.1", "claim-late.2"]
