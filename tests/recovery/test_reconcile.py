"""Reconcile against a ledger built the way the gateway builds it: each kind of difference, seeded on purpose,
is found exactly (and nothing else is); half-done work (a missing mirror, an undelivered claim) is finished."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from gateway.catalog import store
from gateway.catalog.campaign import Activity, ActivityIn, BlocklistChange, PackItem, TemplateIn, hot_config
from gateway.keys import BLOCKLIST
from gateway.tokens import UserIdentity
from tests.lua.support import Claimer
from tests.recovery.support import (
    FIXED_PARTITIONS,
    KEYS,
    OPERATOR,
    Sale,
    admin,
    build_sale,
    claim,
    marks,
    new_activity,
    persist,
    reconciler,
    text,
    texts,
)
from worker.consumer import Consumer
from worker.recovery.compare import Difference
from worker.recovery.reconcile import Report


async def settled_sale(consumer: Consumer) -> Sale:
    """The sale of ``build_sale``, persisted by the worker, and checked clean before anything is seeded."""
    sale = await build_sale(consumer)
    await persist(consumer)
    report = await reconciler(consumer).run()
    assert (report.differences, report.repaired) == ([], []), report.lines()
    return sale


async def run_once(consumer: Consumer) -> Report:
    return await reconciler(consumer).run()


async def stream_entries(consumer: Consumer) -> int:
    streams = [r["stream"] for r in await consumer.pool.fetch("SELECT stream FROM streams")]
    return sum([await consumer.client.xlen(stream) for stream in streams])


def stream_of(reply: object) -> list[tuple[str, dict[str, str]]]:
    assert isinstance(reply, list), reply
    return [(text(entry_id), dict(fields)) for entry_id, fields in reply]


async def redis_seqs(consumer: Consumer) -> dict[str, int]:
    """Each registered partition's seq in Redis, where it has one."""
    found = {}
    for row in await consumer.pool.fetch("SELECT partition FROM streams"):
        seq = await consumer.client.get(f"{row['partition']}:seq")
        if seq is not None:
            found[row["partition"]] = int(seq)
    return found


async def claims_rows(consumer: Consumer) -> list[tuple[str, str, int]]:
    rows = await consumer.pool.fetch("SELECT claim_id, user_id, ordinal FROM claims ORDER BY ordinal")
    return [(r["claim_id"], r["user_id"], r["ordinal"]) for r in rows]


# --- agreement ---------------------------------------------------------------------------------------------


async def test_a_clean_state_has_no_difference(consumer: Consumer) -> None:
    """Patch before the start, restock, pause and resume, claims, the blocklist, an activity left paused: all
    drained, all agree."""
    sale = await build_sale(consumer)
    paused = await new_activity(consumer, stock=3)
    await claim(consumer, paused.id, "p1", "dp1")
    assert await admin(consumer).set_status(paused.id, "pause", OPERATOR, int(time.time())) == "paused"
    await persist(consumer)

    report = await reconciler(consumer, attempts=3).run()

    assert report.differences == []
    assert report.repaired == []
    assert report.checked == FIXED_PARTITIONS + 2
    # The drain re-applies every entry still in the streams (nothing is trimmed yet): 9 + 4 + 3 + 3 + 1, all
    # persisted already, so it changes nothing.
    assert report.drained == await stream_entries(consumer) == 20
    assert report.lines()[-1] == "differences: 0"
    audit = await consumer.pool.fetch(
        "SELECT action FROM audit WHERE partition = $1 ORDER BY seq", sale.keys.tag
    )
    assert [r["action"] for r in audit] == [
        "create_activity",
        "patch_activity",
        "change_stock",
        "set_status",
        "set_status",
    ]
    config = await consumer.client.hgetall(sale.keys.config)
    # What the ledger rebuilt agreed with this, so the history was read in full (patch, restock, status).
    assert {
        k: config[k] for k in ("name", "status", "stock_left", "taken", "per_user_limit", "per_device_limit")
    } == {
        "name": "renamed",
        "status": "active",
        "stock_left": "3",
        "taken": "4",
        "per_user_limit": "2",
        "per_device_limit": "3",
    }
    assert await consumer.client.hget(KEYS.activity(paused.id).config, "status") == "paused"


async def test_reconcile_drains_what_no_worker_persisted(consumer: Consumer) -> None:
    sale = await build_sale(consumer)  # no worker has run
    assert await consumer.pool.fetchval("SELECT count(*) FROM claims") == 0

    report = await run_once(consumer)

    assert report.differences == [], report.lines()
    # Every entry reached the ledger: each partition's mark is its seq in Redis. (activity: created, patched,
    # restocked, paused, resumed, 4 claims; wallets: one delivery each; blocklist: 3 changes.)
    assert await marks(consumer) == await redis_seqs(consumer)
    deliveries = Counter(KEYS.wallet(user).tag for user in ("u1", "u1", "u2", "u3"))
    assert await marks(consumer) == {sale.keys.tag: 9, BLOCKLIST.tag: 3, **deliveries}
    rows = await claims_rows(consumer)
    assert sorted(user for _, user, _ in rows) == ["u1", "u1", "u2", "u3"]
    assert [ordinal for _, _, ordinal in rows] == [1, 2, 3, 4]
    assert await consumer.pool.fetchval("SELECT count(*) FROM coupons") == 8

    # The worker then reads the same entries (its group never saw them): each is still in the ledger once.
    assert await persist(consumer) == 16
    assert await claims_rows(consumer) == rows
    assert await consumer.pool.fetchval("SELECT count(*) FROM coupons") == 8
    assert await consumer.pool.fetchval("SELECT count(*) FROM conflicts") == 0
    assert (await run_once(consumer)).differences == []


# --- each kind of difference ---------------------------------------------------------------------------------


async def test_a_user_count_changed_in_redis(consumer: Consumer) -> None:
    sale = await settled_sale(consumer)
    await consumer.client.hincrby(sale.keys.user_counts, "u1", 5)

    report = await reconciler(consumer, attempts=2).run()

    assert report.differences == [
        Difference(sale.keys.tag, "user_count", sale.keys.user_counts, "u1", "7", "2")
    ]
    assert report.repaired == []
    assert report.lines()[-2:] == [
        f"difference: {sale.keys.tag} user_count: {sale.keys.user_counts}[u1] redis='7' ledger='2'",
        "differences: 1",
    ]


async def test_a_device_count_changed_in_redis(consumer: Consumer) -> None:
    sale = await settled_sale(consumer)
    await consumer.client.hincrby(sale.keys.device_counts, "d1", -1)
    await consumer.client.hset(sale.keys.device_counts, "d-new", "1")

    report = await run_once(consumer)

    assert report.differences == [
        Difference(sale.keys.tag, "device_count", sale.keys.device_counts, "d-new", "1", None),
        Difference(sale.keys.tag, "device_count", sale.keys.device_counts, "d1", "2", "3"),
    ]


async def test_a_stock_figure_changed_in_redis(consumer: Consumer) -> None:
    sale = await settled_sale(consumer)
    await consumer.client.hincrby(sale.keys.config, "stock_left", 3)

    report = await run_once(consumer)

    assert report.differences == [
        Difference(sale.keys.tag, "config", sale.keys.config, "stock_left", "6", "3")
    ]


async def test_a_status_changed_in_redis_only(consumer: Consumer) -> None:
    sale = await settled_sale(consumer)
    await consumer.client.hset(sale.keys.config, "status", "paused")

    report = await run_once(consumer)

    assert report.differences == [
        Difference(sale.keys.tag, "config", sale.keys.config, "status", "paused", "active")
    ]


async def test_a_coupon_state_changed_in_redis(consumer: Consumer) -> None:
    await settled_sale(consumer)
    wallet = KEYS.wallet("u3")
    [coupon_id, _] = texts(await consumer.client.zrange(wallet.user_index("u3"), 0, -1))
    held = json.loads(text(await consumer.client.hget(wallet.coupons, coupon_id)))
    await consumer.client.hset(wallet.coupons, coupon_id, json.dumps({**held, "status": "used"}))

    report = await run_once(consumer)

    assert report.differences == [
        Difference(wallet.tag, "coupon", f"{wallet.coupons} {coupon_id}", "status", "used", "available")
    ]


async def test_a_coupon_missing_from_redis(consumer: Consumer) -> None:
    await settled_sale(consumer)
    wallet = KEYS.wallet("u3")
    [coupon_id, other] = texts(await consumer.client.zrange(wallet.user_index("u3"), 0, -1))
    held = json.loads(text(await consumer.client.hget(wallet.coupons, coupon_id)))
    await consumer.client.hdel(wallet.coupons, coupon_id)
    await consumer.client.zrem(wallet.user_index("u3"), coupon_id)

    report = await run_once(consumer)

    assert report.differences == [
        Difference(wallet.tag, "coupon", wallet.coupons, coupon_id, None, held),
        Difference(wallet.tag, "index", wallet.user_index("u3"), "", [other], [coupon_id, other]),
    ]


async def test_a_missing_mirror_is_repaired(consumer: Consumer) -> None:
    """A definition committed in Postgres whose put_activity never ran (the gateway died in between)."""
    await settled_sale(consumer)
    now = int(time.time())
    template = await admin(consumer).create_template(
        TemplateIn(name="t", kind="cash", amount_off=300, valid_days=5), OPERATOR, now
    )
    body = ActivityIn(
        name="lost",
        pack=[PackItem(template.id, 1)],
        starts_at=now - 5,
        ends_at=now + 600,
        stock=5,
        per_user_limit=1,
    )
    activity = Activity(
        **{f: getattr(body, f) for f in body.__struct_fields__},
        id="lost-mirror",
        status="active",
        face_per_pack=body.check({template.id: template}),
        created_by=OPERATOR,
        created_at=now,
    )
    keys = KEYS.activity(activity.id)
    async with consumer.pool.acquire() as conn, conn.transaction():
        await store.insert_activity(conn, activity, keys)
    await consumer.refresh_streams()  # a running worker makes the registered stream and its group
    assert await persist(consumer) == 0
    assert [g["name"] for g in await consumer.client.xinfo_groups(keys.events)] == [keys.events]

    report = await run_once(consumer)

    assert report.repaired == [f"{keys.tag} definition mirrored into Redis"]
    assert report.differences == []
    assert report.checked == FIXED_PARTITIONS + 2
    expected = {
        name: str(value)
        for name, value in hot_config(activity, {template.id: template}).items()
        if name != "stock"
    }
    assert await consumer.client.hgetall(keys.config) == {**expected, "stock_left": "5", "taken": "0"}
    assert await consumer.client.get(keys.seq) == "1"
    audit = await consumer.pool.fetch("SELECT action, operator FROM audit WHERE partition = $1", keys.tag)
    assert [(r["action"], r["operator"]) for r in audit] == [("create_activity", OPERATOR)]
    again = await run_once(consumer)
    assert (again.differences, again.repaired) == ([], [])
    assert (await claim(consumer, activity.id, "m1", "dm1")).outcome == "ok"  # the mirror sells


async def test_a_seq_behind_the_ledger(consumer: Consumer) -> None:
    sale = await settled_sale(consumer)
    mark = (await marks(consumer))[sale.keys.tag]
    assert mark == 9
    await consumer.client.set(sale.keys.seq, mark - 3)

    report = await run_once(consumer)

    assert report.differences == [Difference(sale.keys.tag, "seq", sale.keys.seq, "behind", 6, 9)]


async def test_a_seq_ahead_of_the_ledger(consumer: Consumer) -> None:
    """After the drain every event Redis recorded is in the ledger: a higher seq means events it never got."""
    sale = await settled_sale(consumer)
    await consumer.client.incrby(sale.keys.seq, 2)

    report = await run_once(consumer)

    assert report.differences == [Difference(sale.keys.tag, "seq", sale.keys.seq, "ahead", 11, 9)]


@pytest.mark.parametrize("change", ["edited", "deleted"])
async def test_an_idempotency_record_changed_or_deleted(consumer: Consumer, change: str) -> None:
    sale = await settled_sale(consumer)
    key = sale.keys.idempotency("u1", "k1")
    held = text(await consumer.client.get(key))
    assert held == f"{held[:32]}|{sale.answers['u1']}"
    if change == "edited":
        await consumer.client.set(key, "f" * 32 + "|" + sale.answers["u1"], keepttl=True)
    else:
        await consumer.client.delete(key)

    report = await run_once(consumer)

    now_held = None if change == "deleted" else "f" * 32 + "|" + sale.answers["u1"]
    assert report.differences == [Difference(sale.keys.tag, "record", key, "", now_held, held)]


async def test_a_claim_whose_deliver_never_ran_is_delivered(consumer: Consumer) -> None:
    sale = await settled_sale(consumer)
    claimer = Claimer(consumer.runner, consumer.settings.claim.idempotency_ttl_seconds)
    claimed = await claimer(
        sale.activity.id, now=int(time.time()), user="lost", device="dl", claim_id="claimlost"
    )
    assert claimed.outcome == "ok"  # the gateway died before deliver
    wallet = KEYS.wallet("lost")

    report = await run_once(consumer)

    assert report.repaired == [f"{sale.keys.tag} claim claimlost delivered to lost"]
    assert report.differences == [], report.lines()
    assert await consumer.client.zrange(wallet.user_index("lost"), 0, -1) == ["claimlost.1", "claimlost.2"]
    assert await consumer.pool.fetchval("SELECT count(*) FROM conflicts") == 0
    rows = await consumer.pool.fetch(
        "SELECT coupon_id, status, partition FROM coupons WHERE claim_id = 'claimlost'"
    )
    assert sorted((r["coupon_id"], r["status"], r["partition"]) for r in rows) == [
        ("claimlost.1", "available", wallet.tag),
        ("claimlost.2", "available", wallet.tag),
    ]
    again = await run_once(consumer)
    assert (again.differences, again.repaired) == ([], [])


async def test_coupons_lost_from_redis_and_ledger_are_delivered_again(consumer: Consumer) -> None:
    """The other way a deliver goes missing: the claim is in the ledger, its coupons nowhere (the wallet's
    records, the delivered entry (trimmed, as the worker trims persisted entries), the rows and history)."""
    sale = await settled_sale(consumer)
    [claim_id] = [
        r["claim_id"] for r in await consumer.pool.fetch("SELECT claim_id FROM claims WHERE user_id = 'u3'")
    ]
    wallet = KEYS.wallet("u3")
    coupon_ids = [f"{claim_id}.1", f"{claim_id}.2"]
    await consumer.client.hdel(wallet.coupons, *coupon_ids)
    await consumer.client.zrem(wallet.user_index("u3"), *coupon_ids)
    [delivered] = [
        entry_id
        for entry_id, fields in stream_of(await consumer.client.xrange(wallet.events))
        if fields.get("claim_id") == claim_id
    ]
    assert await consumer.client.xdel(wallet.events, delivered) == 1
    await consumer.pool.execute("DELETE FROM coupon_events WHERE coupon_id = ANY($1)", coupon_ids)
    await consumer.pool.execute("DELETE FROM coupons WHERE claim_id = $1", claim_id)

    report = await run_once(consumer)

    assert report.repaired == [f"{sale.keys.tag} claim {claim_id} delivered to u3"]
    assert report.differences == [], report.lines()
    assert await consumer.client.zrange(wallet.user_index("u3"), 0, -1) == coupon_ids
    assert await consumer.pool.fetchval("SELECT count(*) FROM coupons WHERE claim_id = $1", claim_id) == 2
    assert (
        await consumer.pool.fetchval(
            "SELECT count(*) FROM coupon_events WHERE coupon_id = ANY($1)", coupon_ids
        )
        == 2
    )
    assert await consumer.pool.fetchval("SELECT count(*) FROM conflicts") == 0
    again = await run_once(consumer)
    assert (again.differences, again.repaired) == ([], [])


async def test_a_blocklist_entry_removed_from_redis_only(consumer: Consumer) -> None:
    await settled_sale(consumer)
    entry = json.loads(text(await consumer.client.hget(BLOCKLIST.entries, "user:bad1")))
    assert entry["by"] == OPERATOR
    await consumer.client.srem(BLOCKLIST.users, "bad1")
    await consumer.client.hdel(BLOCKLIST.entries, "user:bad1")

    report = await run_once(consumer)

    assert report.differences == [
        Difference(BLOCKLIST.tag, "blocklist", BLOCKLIST.users, "", [], ["bad1"]),
        Difference(BLOCKLIST.tag, "blocklist", BLOCKLIST.entries, "user:bad1", None, entry),
    ]


async def test_an_allow_list_member_removed_from_redis(consumer: Consumer) -> None:
    activity = await new_activity(consumer, allow=["a1", "a2"])
    await persist(consumer)
    keys = KEYS.activity(activity.id)
    await consumer.client.srem(keys.allow_list, "a2")

    report = await run_once(consumer)

    assert report.differences == [Difference(keys.tag, "allow", keys.allow_list, "", ["a1"], ["a1", "a2"])]


async def test_a_unit_beyond_the_stock_ever_made_available_is_a_ledger_difference(consumer: Consumer) -> None:
    sale = await settled_sale(consumer)
    await consumer.pool.execute(
        "UPDATE claims SET ordinal = 99 WHERE activity_id = $1 AND ordinal = 4", sale.activity.id
    )

    report = await run_once(consumer)

    assert report.differences == [
        Difference(sale.keys.tag, "ledger", "claims", "units above stock ever made available", 99, 7)
    ]


async def test_reconcile_with_grants_and_a_gateway_claim_after_it(consumer: Consumer) -> None:
    """Grants (no device) and their call record agree too; a claim after reconcile is persisted once."""
    sale = await build_sale(consumer, grants=True)
    await persist(consumer)
    assert (await run_once(consumer)).differences == []
    await consumer.claims.claim(sale.activity.id, UserIdentity("late", "dlate"), now=int(time.time()))
    report = await run_once(consumer)
    assert report.differences == [], report.lines()
    assert await marks(consumer) == await redis_seqs(consumer)  # every entry reached the ledger
    assert await consumer.pool.fetchval("SELECT count(*) FROM coupons WHERE user_id = 'late'") == 2
    assert [ordinal for _, _, ordinal in await claims_rows(consumer)] == [1, 2, 3, 4, 5, 6, 7]


async def test_no_repair_is_reported_for_claims_already_delivered(consumer: Consumer) -> None:
    """Every claim here was delivered by the gateway; only the worker has not run. Nothing needs repair."""
    await build_sale(consumer)
    report = await run_once(consumer)
    assert report.differences == []
    assert report.repaired == []


async def test_reconcile_drains_a_stream_longer_than_one_batch(consumer: Consumer) -> None:
    """1,100 blocklist changes no worker persisted: drained in two reads, each entry once."""
    service = admin(consumer)
    now = int(time.time())
    for i in range(1_100):
        await service.change_blocklist("add", BlocklistChange(users=[f"b{i}"]), OPERATOR, now)

    report = await run_once(consumer)

    assert report.differences == [], report.lines()[:5]
    assert report.drained == 1_100
    assert (await marks(consumer))[BLOCKLIST.tag] == 1_100
    assert await consumer.pool.fetchval("SELECT count(*) FROM blocklist WHERE present") == 1_100
    assert (
        await consumer.pool.fetchval("SELECT count(DISTINCT seq) FROM audit WHERE partition = '{blocklist}'")
        == 1_100
    )


async def test_a_user_index_the_ledger_does_not_know_is_a_difference(consumer: Consumer) -> None:
    await settled_sale(consumer)
    wallet = KEYS.wallet("ghost")
    await consumer.client.zadd(wallet.user_index("ghost"), {"c-ghost.1": 0})

    report = await run_once(consumer)

    assert report.differences == [
        Difference(wallet.tag, "index", wallet.user_index("ghost"), "", ["c-ghost.1"], None)
    ]
