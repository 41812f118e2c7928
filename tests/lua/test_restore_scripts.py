"""The restore_* scripts against real Redis (cluster mode): each reply, and every key each one touches, before
and after (type, value, expiry)."""

from __future__ import annotations

import json
import time
from itertools import count
from typing import Any

from gateway.codes.batches import batch_record
from gateway.events import SCHEMA_VERSION
from gateway.keys import BLOCKLIST, KeySpace, Partition, WalletKeys, order_field, stable_bucket
from gateway.scripts.runner import RedisClient, ScriptRunner
from tests.lua.support import (
    DAY,
    NOW,
    Snapshot,
    activity_config,
    changed,
    put_activity,
    script_error,
    snapshot,
)

ACT = KeySpace.activity("act1")
ACTIVITY_KEYS = [
    ACT.config,
    ACT.user_counts,
    ACT.device_counts,
    ACT.allow_list,
    ACT.code_batches,
    ACT.retired,
]
BLOCKLIST_KEYS = [BLOCKLIST.users, BLOCKLIST.devices, BLOCKLIST.entries, BLOCKLIST.version]
KEYSPACE = KeySpace(8, 4)
BUCKET = KeySpace.code_of_bucket(2)
CODE_KEYS = [BUCKET.codes, BUCKET.batches, BUCKET.counters]


def wallet_keys(wallet: WalletKeys, user: str = "") -> list[str]:
    """restore_wallet's KEYS: coupons, one user's index (the placeholder when none), orders, locks, counters, the
    expiry indexes."""
    return [
        wallet.coupons,
        wallet.user_index(user),
        wallet.orders,
        wallet.locks,
        wallet.counters,
        wallet.expiring,
        wallet.finished,
        wallet.finished_orders,
    ]


def same_bucket_users() -> tuple[str, str]:
    """Two user ids whose wallets share one bucket (one slot), so one script may see both."""
    first = "alice"
    bucket = stable_bucket(first, KEYSPACE.wallet_buckets)
    other = next(f"bob{n}" for n in count() if stable_bucket(f"bob{n}", KEYSPACE.wallet_buckets) == bucket)
    return first, other


async def restore_activity(runner: ScriptRunner, step: str, payload: dict[str, Any]) -> list[Any]:
    return await runner.run("restore_activity", ACTIVITY_KEYS, [step, json.dumps(payload)])


async def restore_blocklist(runner: ScriptRunner, step: str, payload: dict[str, Any]) -> list[Any]:
    return await runner.run("restore_blocklist", BLOCKLIST_KEYS, [step, json.dumps(payload)])


async def restore_finish(
    runner: ScriptRunner,
    partition: Partition,
    at_least: int,
    *,
    now: int = NOW,
    event_id: str = "ev-restore",
    operator: str = "ops",
    summary: str = '{"at_least":0}',
) -> list[Any]:
    return await runner.run(
        "restore_finish", [partition.seq, partition.events], [now, event_id, operator, at_least, summary]
    )


def record(coupon_id: str, user: str, status: str = "available", version: int = 1) -> dict[str, Any]:
    return {
        "user": user,
        "activity": "act1",
        "template": "t1",
        "claim": coupon_id.partition(".")[0],
        "valid_from": NOW,
        "valid_until": NOW + 7 * 86_400,
        "status": status,
        "version": version,
    }


def no_expiry(found: Snapshot) -> None:
    for key, (_, _, expires) in found.items():
        assert expires == -1, f"{key} expires"


# --- restore_activity ----------------------------------------------------------------------------------------


async def seed_activity(runner: ScriptRunner, client: RedisClient) -> None:
    """A mirrored activity with counts, an allow-list, a field the ledger does not know (stale) and a marker of
    an earlier retirement (a partition revived, then rolled back: the rebuild makes it live)."""
    assert (await put_activity(runner, "act1", activity_config(stock=9), allow=["old1", "old2"]))[0] == "ok"
    await client.hset(ACT.config, mapping={"stale": "x", "taken": "4"})
    await client.hset(ACT.user_counts, mapping={"gone-user": "3", "u1": "9"})
    await client.hset(ACT.device_counts, mapping={"gone-device": "3"})
    await client.hset(ACT.code_batches, mapping={"gone-batch": "2", "b1": "void"})
    await client.set(ACT.retired, "1")


async def test_activity_reset_replaces_config_counts_and_allow_list(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await seed_activity(runner, redis_client)
    before = await snapshot(redis_client)
    config = ["status", "paused", "stock_left", "5", "taken", "3", "name", "sale"]

    reply = await restore_activity(
        runner,
        "reset",
        {
            "config": config,
            "users": ["u1", "2", "u2", "1"],
            "devices": ["d1", "3"],
            "allow": ["a1", "a2"],
            "batches": ["b1", "4", "b2", "void"],
        },
    )

    assert reply == ["ok"]
    after = await snapshot(redis_client)
    assert changed(before, after) == set(ACTIVITY_KEYS)
    assert after[ACT.config] == (
        "hash",
        {"status": "paused", "stock_left": "5", "taken": "3", "name": "sale"},
        -1,
    )
    assert after[ACT.user_counts] == ("hash", {"u1": "2", "u2": "1"}, -1)
    assert after[ACT.device_counts] == ("hash", {"d1": "3"}, -1)
    assert after[ACT.allow_list] == ("set", ["a1", "a2"], -1)
    assert after[ACT.code_batches] == ("hash", {"b1": "4", "b2": "void"}, -1)
    assert ACT.retired not in after
    assert after[ACT.seq] == before[ACT.seq]  # seq and the stream are restore_finish's
    assert after[ACT.events] == before[ACT.events]
    no_expiry(after)


async def test_activity_reset_with_nothing_deletes_the_keys(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await seed_activity(runner, redis_client)
    before = await snapshot(redis_client)

    assert await restore_activity(
        runner, "reset", {"config": [], "users": [], "devices": [], "allow": [], "batches": []}
    ) == ["ok"]

    after = await snapshot(redis_client)
    assert changed(before, after) == set(ACTIVITY_KEYS)
    assert set(after) == set(before) - set(ACTIVITY_KEYS)


async def test_activity_more_adds_without_removing(runner: ScriptRunner, redis_client: RedisClient) -> None:
    await seed_activity(runner, redis_client)
    await restore_activity(
        runner,
        "reset",
        {
            "config": ["status", "active"],
            "users": ["u1", "2"],
            "devices": ["d1", "1"],
            "allow": ["a1"],
            "batches": ["b1", "3"],
        },
    )
    before = await snapshot(redis_client)

    reply = await restore_activity(
        runner,
        "more",
        {
            "config": ["status", "ended", "extra", "1"],  # config goes with "reset" only: ignored here
            "users": ["u2", "1", "u3", "4"],
            "devices": ["d2", "2"],
            "allow": ["a2", "a1"],
            "batches": ["b2", "void"],
        },
    )

    assert reply == ["ok"]
    after = await snapshot(redis_client)
    assert changed(before, after) == {ACT.user_counts, ACT.device_counts, ACT.allow_list, ACT.code_batches}
    assert after[ACT.config] == ("hash", {"status": "active"}, -1)
    assert after[ACT.user_counts] == ("hash", {"u1": "2", "u2": "1", "u3": "4"}, -1)
    assert after[ACT.device_counts] == ("hash", {"d1": "1", "d2": "2"}, -1)
    assert after[ACT.allow_list] == ("set", ["a1", "a2"], -1)
    assert after[ACT.code_batches] == ("hash", {"b1": "3", "b2": "void"}, -1)
    no_expiry(after)


async def test_activity_more_with_an_empty_payload_changes_nothing(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await seed_activity(runner, redis_client)
    before = await snapshot(redis_client)
    assert await restore_activity(runner, "more", {}) == ["ok"]
    assert await snapshot(redis_client) == before


async def test_activity_unknown_step_is_an_error_and_writes_nothing(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await seed_activity(runner, redis_client)
    before = await snapshot(redis_client)
    with script_error("restore_activity: unknown step bogus"):
        await restore_activity(runner, "bogus", {"config": ["status", "ended"], "users": ["u9", "1"]})
    assert await snapshot(redis_client) == before


# --- restore_wallet ------------------------------------------------------------------------------------------


async def test_wallet_user_replaces_that_users_index_and_keeps_other_users(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    alice, bob = same_bucket_users()
    wallet = KEYSPACE.wallet(alice)
    assert KEYSPACE.wallet(bob) == wallet
    await redis_client.hset(
        wallet.coupons,
        mapping={
            "c0.1": json.dumps(record("c0.1", alice)),  # alice's coupon the ledger no longer lists
            "c9.1": json.dumps(record("c9.1", bob)),
        },
    )
    await redis_client.zadd(wallet.user_index(alice), {"c0.1": 0, "stale": 0})
    await redis_client.zadd(wallet.user_index(bob), {"c9.1": 0})
    await redis_client.set(wallet.seq, 7)
    before = await snapshot(redis_client)
    records = [
        "c1.1",
        json.dumps(record("c1.1", alice)),
        "c1.2",
        json.dumps(record("c1.2", alice, status="used", version=3)),
    ]

    reply = await runner.run("restore_wallet", wallet_keys(wallet, alice), ["user", json.dumps(records)])

    assert reply == ["ok"]
    after = await snapshot(redis_client)
    assert changed(before, after) == {wallet.coupons, wallet.user_index(alice)}
    assert after[wallet.user_index(alice)] == ("zset", [("c1.1", 0.0), ("c1.2", 0.0)], -1)
    assert after[wallet.user_index(bob)] == ("zset", [("c9.1", 0.0)], -1)  # the other user's index kept
    coupons = {cid: json.loads(value) for cid, value in after[wallet.coupons][1].items()}
    assert coupons == {
        "c0.1": record("c0.1", alice),  # "user" only adds records: emptying the hash is "reset"'s
        "c1.1": record("c1.1", alice),
        "c1.2": record("c1.2", alice, status="used", version=3),
        "c9.1": record("c9.1", bob),
    }
    assert after[wallet.coupons][1]["c1.2"] == records[3]  # stored as given
    assert after[wallet.seq] == ("string", "7", -1)
    no_expiry(after)


async def seed_checkout(client: RedisClient, wallet: WalletKeys, user: str) -> None:
    """An order, its lock and the counters, as the checkout scripts leave them; a coupon waiting for the expiry
    sweep and one it found final."""
    await client.hset(
        wallet.orders, order_field(user, "o-old"), json.dumps(order("c0.1", "locked", NOW + 60))
    )
    await client.zadd(wallet.locks, {"c0.1": NOW + 60})
    await client.hset(wallet.counters, mapping={"act1|locked": "1", "act1|redeemed": "0"})
    await client.zadd(wallet.expiring, {"c0.1": NOW + DAY})
    await client.zadd(wallet.finished, {"c8.1": NOW - DAY})
    await client.zadd(wallet.finished_orders, {order_field(user, "o-gone"): NOW - DAY})


def order(coupon_id: str, status: str, locked_until: int | None = None, version: int = 1) -> dict[str, Any]:
    found: dict[str, Any] = {
        "coupon": coupon_id,
        "status": status,
        "discount": 500,
        "split": '[{"sku":"s1","amount":500}]',
        "version": version,
    }
    if locked_until is not None:
        found["locked_until"] = locked_until
    return found


async def test_wallet_reset_empties_coupons_orders_locks_counters_expiry_and_leaves_the_user_indexes(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    alice, _ = same_bucket_users()
    wallet = KEYSPACE.wallet(alice)
    await redis_client.hset(wallet.coupons, mapping={"c0.1": json.dumps(record("c0.1", alice))})
    await redis_client.zadd(wallet.user_index(alice), {"c0.1": 0})
    await seed_checkout(redis_client, wallet, alice)
    fails = wallet.failed_codes_of_user(alice)
    await redis_client.zadd(fails, {"attempt-1": NOW})  # rate-limit state: not restore's
    before = await snapshot(redis_client)

    reply = await runner.run("restore_wallet", wallet_keys(wallet), ["reset", "[]"])

    assert reply == ["ok"]
    after = await snapshot(redis_client)
    emptied = {
        wallet.coupons,
        wallet.orders,
        wallet.locks,
        wallet.counters,
        wallet.expiring,
        wallet.finished,
        wallet.finished_orders,
    }
    assert emptied <= set(before)
    assert changed(before, after) == emptied
    assert set(after) == set(before) - emptied
    assert wallet.user_index("") not in after  # the placeholder index is never created
    assert after[wallet.user_index(alice)] == before[wallet.user_index(alice)]
    assert after[fails] == before[fails]


async def test_wallet_checkout_adds_orders_locks_counters_and_expiry_entries(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    alice, bob = same_bucket_users()
    wallet = KEYSPACE.wallet(alice)
    await redis_client.hset(wallet.coupons, mapping={"c0.1": json.dumps(record("c0.1", alice))})
    await redis_client.zadd(wallet.user_index(alice), {"c0.1": 0})
    await seed_checkout(redis_client, wallet, alice)
    before = await snapshot(redis_client)
    first = {
        "orders": [
            order_field(alice, "o1"),
            json.dumps(order("c1.1", "locked", NOW + 120, version=3)),
            order_field(bob, "o1"),
            json.dumps({**order("c9.1", "refunded", version=3), "returned": False}),
        ],
        "locks": ["c1.1", str(NOW + 120)],
        "counters": ["act1|locked", "2", "act1|redeemed", "1", "act1|redeemed_value", "500"],
        "expiring": ["c1.1", str(NOW + DAY), "c1.2", NOW + 2 * DAY],
        "finished": ["c9.1", str(NOW - 5)],
        "done": [order_field(bob, "o1"), NOW - 5],
    }

    reply = await runner.run("restore_wallet", wallet_keys(wallet), ["checkout", json.dumps(first)])

    assert reply == ["ok"]
    after = await snapshot(redis_client)
    assert changed(before, after) == {
        wallet.orders,
        wallet.locks,
        wallet.counters,
        wallet.expiring,
        wallet.finished,
        wallet.finished_orders,
    }
    assert after[wallet.finished_orders] == (
        "zset",
        sorted(
            [(order_field(alice, "o-gone"), float(NOW - DAY)), (order_field(bob, "o1"), float(NOW - 5))],
            key=lambda x: x[1],
        ),
        -1,
    )
    assert after[wallet.expiring] == (
        "zset",
        [("c0.1", float(NOW + DAY)), ("c1.1", float(NOW + DAY)), ("c1.2", float(NOW + 2 * DAY))],
        -1,
    )
    assert after[wallet.finished] == ("zset", [("c8.1", float(NOW - DAY)), ("c9.1", float(NOW - 5))], -1)
    assert after[wallet.orders] == (
        "hash",
        {
            order_field(alice, "o-old"): before[wallet.orders][1][order_field(alice, "o-old")],  # only adds
            order_field(alice, "o1"): first["orders"][1],  # stored as given
            order_field(bob, "o1"): first["orders"][3],
        },
        -1,
    )
    assert after[wallet.locks] == ("zset", [("c0.1", float(NOW + 60)), ("c1.1", float(NOW + 120))], -1)
    assert after[wallet.counters] == (
        "hash",
        {"act1|locked": "2", "act1|redeemed": "1", "act1|redeemed_value": "500"},
        -1,
    )
    no_expiry(after)

    # A later part adds to the same keys; an empty part changes nothing.
    second = {"orders": [], "locks": ["c2.1", str(NOW + 5)], "counters": ["act2|locked", "1"]}
    assert await runner.run("restore_wallet", wallet_keys(wallet), ["checkout", json.dumps(second)]) == ["ok"]
    again = await snapshot(redis_client)
    assert changed(after, again) == {wallet.locks, wallet.counters}
    assert again[wallet.locks][1][-1] == ("c1.1", float(NOW + 120))
    assert ("c2.1", float(NOW + 5)) in again[wallet.locks][1]
    assert again[wallet.counters][1]["act2|locked"] == "1"
    assert await runner.run("restore_wallet", wallet_keys(wallet), ["checkout", "{}"]) == ["ok"]
    assert await snapshot(redis_client) == again


async def test_wallet_user_leaves_the_checkout_keys(runner: ScriptRunner, redis_client: RedisClient) -> None:
    alice, _ = same_bucket_users()
    wallet = KEYSPACE.wallet(alice)
    await seed_checkout(redis_client, wallet, alice)
    before = await snapshot(redis_client)
    records = ["c1.1", json.dumps(record("c1.1", alice))]

    assert await runner.run("restore_wallet", wallet_keys(wallet, alice), ["user", json.dumps(records)]) == [
        "ok"
    ]

    after = await snapshot(redis_client)
    assert changed(before, after) == {wallet.coupons, wallet.user_index(alice)}


async def test_wallet_unknown_step_is_an_error_and_writes_nothing(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    alice, _ = same_bucket_users()
    wallet = KEYSPACE.wallet(alice)
    await redis_client.hset(wallet.coupons, mapping={"c0.1": json.dumps(record("c0.1", alice))})
    await redis_client.zadd(wallet.user_index(alice), {"c0.1": 0})
    before = await snapshot(redis_client)
    with script_error("restore_wallet: unknown step users"):
        await runner.run(
            "restore_wallet",
            wallet_keys(wallet, alice),
            ["users", json.dumps(["c1.1", json.dumps(record("c1.1", alice))])],
        )
    assert await snapshot(redis_client) == before


# --- restore_codes -------------------------------------------------------------------------------------------

CODE_A, CODE_B, CODE_C = ("a" * 64, "b" * 64, "c" * 64)
BATCH_1 = batch_record("act1", NOW - 60, NOW + 3600, '[{"template_id":"t1","count":1,"valid_days":7}]')
BATCH_2 = batch_record("act2", NOW, NOW + 60, '[{"template_id":"t2","count":2,"valid_days":1}]')


def redeemed_code(batch: str, user: str) -> str:
    return json.dumps(
        {
            "batch": batch,
            "user": user,
            "claim": "cl1",
            "answer": '{"claim_id":"cl1","coupons":[]}',
            "activity": "act1",
            "at": NOW,
        }
    )


async def restore_codes(runner: ScriptRunner, step: str, payload: dict[str, Any]) -> list[Any]:
    return await runner.run("restore_codes", CODE_KEYS, [step, json.dumps(payload)])


async def seed_codes(client: RedisClient) -> None:
    await client.hset(BUCKET.codes, mapping={"f" * 64: '{"batch":"old"}', CODE_A: '{"batch":"b1"}'})
    await client.hset(BUCKET.batches, mapping={"old": BATCH_2})
    await client.hset(BUCKET.counters, mapping={"act9": "4"})
    await client.set(BUCKET.seq, 9)


async def test_codes_reset_replaces_codes_batches_and_counters(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await seed_codes(redis_client)
    other = KEYSPACE.code_of_bucket(3)
    await redis_client.hset(other.codes, CODE_C, '{"batch":"b1"}')  # another bucket: untouched
    before = await snapshot(redis_client)
    payload = {
        "codes": [CODE_A, '{"batch":"b1"}', CODE_B, redeemed_code("b1", "u1")],
        "batches": ["b1", BATCH_1],
        "counters": ["act1", "1"],
    }

    assert await restore_codes(runner, "reset", payload) == ["ok"]

    after = await snapshot(redis_client)
    assert changed(before, after) == set(CODE_KEYS)
    assert after[BUCKET.codes] == ("hash", {CODE_A: '{"batch":"b1"}', CODE_B: redeemed_code("b1", "u1")}, -1)
    assert after[BUCKET.batches] == ("hash", {"b1": BATCH_1}, -1)
    assert after[BUCKET.counters] == ("hash", {"act1": "1"}, -1)
    assert after[BUCKET.seq] == before[BUCKET.seq]  # seq and the stream are restore_finish's
    assert after[other.codes] == before[other.codes]
    no_expiry(after)


async def test_codes_reset_with_nothing_deletes_the_keys(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await seed_codes(redis_client)
    before = await snapshot(redis_client)
    assert await restore_codes(runner, "reset", {"codes": [], "batches": [], "counters": []}) == ["ok"]
    after = await snapshot(redis_client)
    assert set(after) == set(before) - set(CODE_KEYS)


async def test_codes_more_adds_without_removing(runner: ScriptRunner, redis_client: RedisClient) -> None:
    await restore_codes(
        runner, "reset", {"codes": [CODE_A, '{"batch":"b1"}'], "batches": ["b1", BATCH_1], "counters": []}
    )
    before = await snapshot(redis_client)

    reply = await restore_codes(
        runner,
        "more",
        {"codes": [CODE_B, redeemed_code("b2", "u2")], "batches": ["b2", BATCH_2], "counters": ["act2", "1"]},
    )

    assert reply == ["ok"]
    after = await snapshot(redis_client)
    assert changed(before, after) == set(CODE_KEYS)
    assert after[BUCKET.codes][1] == {CODE_A: '{"batch":"b1"}', CODE_B: redeemed_code("b2", "u2")}
    assert after[BUCKET.batches][1] == {"b1": BATCH_1, "b2": BATCH_2}
    assert after[BUCKET.counters][1] == {"act2": "1"}
    assert await restore_codes(runner, "more", {}) == ["ok"]
    assert await snapshot(redis_client) == after


async def test_codes_unknown_step_is_an_error_and_writes_nothing(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await seed_codes(redis_client)
    before = await snapshot(redis_client)
    with script_error("restore_codes: unknown step put"):
        await restore_codes(runner, "put", {"codes": [CODE_B, '{"batch":"b1"}']})
    assert await snapshot(redis_client) == before


async def test_restored_codes_redeem_as_before(runner: ScriptRunner, redis_client: RedisClient) -> None:
    """What restore_codes writes is what redeem_code reads: a redeemed code answers its redeemer as the first
    time and anyone else invalid_code; an unredeemed one is redeemed."""
    pack = '[{"template_id":"t1","count":1,"valid_days":7}]'
    batch = batch_record("act1", NOW - 60, NOW + 3600, pack)
    await restore_codes(
        runner,
        "reset",
        {
            "codes": [CODE_A, '{"batch":"b1"}', CODE_B, redeemed_code("b1", "u1")],
            "batches": ["b1", batch],
            "counters": ["act1", "1"],
        },
    )

    async def redeem(code: str, user: str) -> list[Any]:
        return await runner.run(
            "redeem_code",
            [BUCKET.codes, BUCKET.batches, BUCKET.counters, BUCKET.seq, BUCKET.events],
            [NOW, f"ev-{user}", code, user, "d1", "0", f"claim-{user}"],
        )

    assert await redeem(CODE_B, "u1") == ["replay", '{"claim_id":"cl1","coupons":[]}', "act1"]
    assert await redeem(CODE_B, "u2") == ["invalid_code"]
    assert (await redeem(CODE_A, "u2"))[0] == "ok"
    assert await redis_client.hget(BUCKET.counters, "act1") == "2"


# --- restore_blocklist ---------------------------------------------------------------------------------------


def entry(added_at: int, by: str = "alice") -> str:
    return json.dumps({"added_at": added_at, "by": by})


async def seed_blocklist(client: RedisClient) -> None:
    await client.sadd(BLOCKLIST.users, "old-user", "u1")
    await client.sadd(BLOCKLIST.devices, "old-device")
    await client.hset(
        BLOCKLIST.entries,
        mapping={"user:old-user": entry(1), "user:u1": entry(2), "device:old-device": entry(3)},
    )
    await client.set(BLOCKLIST.version, 5)
    await client.set(BLOCKLIST.seq, 12)


async def test_blocklist_reset_replaces_and_bumps_the_version(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await seed_blocklist(redis_client)
    before = await snapshot(redis_client)

    reply = await restore_blocklist(
        runner,
        "reset",
        {
            "users": ["u1", "u2"],
            "devices": ["d1"],
            "entries": ["user:u1", entry(10), "user:u2", entry(11), "device:d1", entry(12, "bob")],
        },
    )

    assert reply == ["ok"]
    after = await snapshot(redis_client)
    assert changed(before, after) == set(BLOCKLIST_KEYS)
    assert after[BLOCKLIST.users] == ("set", ["u1", "u2"], -1)
    assert after[BLOCKLIST.devices] == ("set", ["d1"], -1)
    assert after[BLOCKLIST.entries] == (
        "hash",
        {"user:u1": entry(10), "user:u2": entry(11), "device:d1": entry(12, "bob")},
        -1,
    )
    assert after[BLOCKLIST.version] == ("string", "6", -1)
    assert after[BLOCKLIST.seq] == ("string", "12", -1)  # seq is restore_finish's


async def test_blocklist_more_adds_and_every_call_bumps_the_version(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await seed_blocklist(redis_client)
    await restore_blocklist(
        runner, "reset", {"users": ["u1"], "devices": [], "entries": ["user:u1", entry(10)]}
    )
    before = await snapshot(redis_client)

    reply = await restore_blocklist(
        runner,
        "more",
        {"users": ["u2"], "devices": ["d2"], "entries": ["user:u2", entry(20), "device:d2", entry(21)]},
    )

    assert reply == ["ok"]
    after = await snapshot(redis_client)
    assert changed(before, after) == set(BLOCKLIST_KEYS)
    assert after[BLOCKLIST.users] == ("set", ["u1", "u2"], -1)
    assert after[BLOCKLIST.devices] == ("set", ["d2"], -1)
    assert after[BLOCKLIST.entries][1] == {"user:u1": entry(10), "user:u2": entry(20), "device:d2": entry(21)}
    assert after[BLOCKLIST.version] == ("string", "7", -1)  # 5, reset -> 6, more -> 7

    # A call that adds nothing new still bumps the version (every gateway reloads): and changes nothing else.
    assert await restore_blocklist(runner, "more", {"users": [], "devices": [], "entries": []}) == ["ok"]
    again = await snapshot(redis_client)
    assert changed(after, again) == {BLOCKLIST.version}
    assert again[BLOCKLIST.version] == ("string", "8", -1)


async def test_blocklist_reset_on_an_empty_redis_creates_the_version(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    reply = await restore_blocklist(
        runner, "reset", {"users": [], "devices": ["d1"], "entries": ["device:d1", entry(1)]}
    )
    assert reply == ["ok"]
    after = await snapshot(redis_client)
    assert after == {
        BLOCKLIST.devices: ("set", ["d1"], -1),
        BLOCKLIST.entries: ("hash", {"device:d1": entry(1)}, -1),
        BLOCKLIST.version: ("string", "1", -1),
    }


async def test_blocklist_unknown_step_is_an_error_and_writes_nothing(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await seed_blocklist(redis_client)
    before = await snapshot(redis_client)
    with script_error("restore_blocklist: unknown step add"):
        await restore_blocklist(
            runner, "add", {"users": ["x"], "devices": [], "entries": ["user:x", entry(1)]}
        )
    assert await snapshot(redis_client) == before  # the version is not bumped either


# --- restore_record ------------------------------------------------------------------------------------------


async def test_record_sets_the_value_with_its_absolute_expiry(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    key = ACT.idempotency("u1", "k1")
    expires = int(time.time()) + 5_000
    value = "a" * 32 + '|{"claim_id":"c1","coupons":[]}'
    before = await snapshot(redis_client)

    assert await runner.run("restore_record", [key], [value, expires]) == ["ok"]

    after = await snapshot(redis_client)
    assert changed(before, after) == {key}
    assert after[key] == ("string", value, expires * 1000)  # EXAT: expires exactly then
    ttl = await redis_client.ttl(key)
    assert expires - int(time.time()) - 2 <= ttl <= expires - int(time.time()) + 1


async def test_record_replaces_a_held_value_and_its_expiry(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    key = ACT.idempotency("u1", "k1")
    other = ACT.idempotency("u2", "k1")
    await redis_client.set(key, "b" * 32 + "|old")  # no expiry: restore gives it one
    await redis_client.set(other, "c" * 32 + "|kept", ex=600)
    before = await snapshot(redis_client)
    expires = int(time.time()) + 90_000

    assert await runner.run("restore_record", [key], ["a" * 32 + "|new", expires]) == ["ok"]

    after = await snapshot(redis_client)
    assert changed(before, after) == {key}
    assert after[key] == ("string", "a" * 32 + "|new", expires * 1000)
    assert after[other] == before[other]


async def test_record_of_a_code_redeem_in_a_wallet_bucket(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    key = KEYSPACE.wallet("u1").idempotency("u1", "k1")
    expires = int(time.time()) + 600
    before = await snapshot(redis_client)

    assert await runner.run("restore_record", [key], ["a" * 32 + "|{}", expires]) == ["ok"]

    after = await snapshot(redis_client)
    assert changed(before, after) == {key}
    assert after[key] == ("string", "a" * 32 + "|{}", expires * 1000)


# --- restore_finish ------------------------------------------------------------------------------------------


async def finish_and_check(
    runner: ScriptRunner, client: RedisClient, partition: Partition, at_least: int, expected_seq: int
) -> dict[str, Any]:
    before = await snapshot(client)
    summary = json.dumps({"at_least": at_least, "users": 2})

    reply = await restore_finish(
        runner, partition, at_least, event_id="ev-9", operator="ops", summary=summary
    )

    assert reply == ["ok", expected_seq]
    after = await snapshot(client)
    assert changed(before, after) == {partition.seq, partition.events}
    assert after[partition.seq] == ("string", str(expected_seq), -1)
    kind, stream, expires = after[partition.events]
    assert (kind, expires) == ("stream", -1)
    old = before.get(partition.events, ("stream", {"entries": [], "added": 0}, -1))[1]
    assert stream["entries"][: len(old["entries"])] == old["entries"]  # nothing removed or rewritten
    assert len(stream["entries"]) == len(old["entries"]) + 1  # exactly one entry appended
    assert stream["added"] == old["added"] + 1
    assert stream["entries"][-1][1] == {
        "type": "restored",
        "v": str(SCHEMA_VERSION),
        "id": "ev-9",
        "seq": str(expected_seq),
        "at": str(NOW),
        "by": "ops",
        "after": summary,
    }
    assert [g["name"] for g in stream["groups"]] == [partition.events]
    result: dict[str, Any] = stream
    return result


async def test_finish_keeps_a_seq_above_the_mark_and_adds_one(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await redis_client.set(ACT.seq, 10)
    stream = await finish_and_check(runner, redis_client, ACT, 5, 11)
    group = stream["groups"][0]
    assert (group["consumers"], group["pending"], group["last-delivered-id"]) == (0, 0, "0-0")


async def test_finish_raises_a_seq_below_the_mark_then_adds_one(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await redis_client.set(ACT.seq, 3)
    await finish_and_check(runner, redis_client, ACT, 7, 8)


async def test_finish_on_a_level_seq_adds_one(runner: ScriptRunner, redis_client: RedisClient) -> None:
    await redis_client.set(ACT.seq, 7)
    await finish_and_check(runner, redis_client, ACT, 7, 8)


async def test_finish_on_an_empty_partition_creates_seq_stream_and_group(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    wallet = KEYSPACE.wallet_of_bucket(3)
    await finish_and_check(runner, redis_client, wallet, 0, 1)
    assert set(await snapshot(redis_client)) == {wallet.seq, wallet.events}


async def test_finish_keeps_an_existing_group_and_its_pending_entries(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    """A stream the worker has read (pending entries, a delivered id): the group is left as it is."""
    assert (await put_activity(runner, "act1", activity_config()))[0] == "ok"  # seq 1, group made, one entry
    read: Any = await redis_client.xreadgroup(ACT.events, "w1", {ACT.events: ">"})
    [(_, [(first_id, _)])] = read
    stream = await finish_and_check(runner, redis_client, ACT, 4, 5)
    group = stream["groups"][0]
    assert (group["consumers"], group["pending"], group["last-delivered-id"]) == (1, 1, first_id)


async def test_finish_on_a_blocklist_partition(runner: ScriptRunner, redis_client: RedisClient) -> None:
    await redis_client.set(BLOCKLIST.version, 4)
    await finish_and_check(runner, redis_client, BLOCKLIST, 2, 3)
    assert await redis_client.get(BLOCKLIST.version) == "4"  # the version is restore_blocklist's


# --- refusals that must write nothing ------------------------------------------------------------------------


async def test_wallet_drop_deletes_only_that_index(runner: ScriptRunner, redis_client: RedisClient) -> None:
    alice, bob = same_bucket_users()
    wallet = KEYSPACE.wallet(alice)
    await redis_client.hset(wallet.coupons, "c1.1", json.dumps(record("c1.1", bob)))
    await redis_client.zadd(wallet.user_index(alice), {"stray.1": 0})
    await redis_client.zadd(wallet.user_index(bob), {"c1.1": 0})
    before = await snapshot(redis_client)
    assert await runner.run("restore_wallet", wallet_keys(wallet, alice), ["drop", "[]"]) == ["ok"]
    after = await snapshot(redis_client)
    assert changed(before, after) == {wallet.user_index(alice)}
    assert wallet.user_index(alice) not in after


async def test_activity_reset_without_a_config_is_refused_before_deleting(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await seed_activity(runner, redis_client)
    before = await snapshot(redis_client)
    with script_error("reset needs the config"):
        await restore_activity(runner, "reset", {"users": ["u1", "1"]})
    assert await snapshot(redis_client) == before


async def test_finish_that_cannot_make_the_group_leaves_seq_alone(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    partition = KEYSPACE.wallet_of_bucket(5)
    await redis_client.set(partition.events, "not a stream")
    await redis_client.set(partition.seq, "3")
    before = await snapshot(redis_client)
    with script_error():
        await restore_finish(runner, partition, 9)
    assert await snapshot(redis_client) == before  # seq not raised: the next restore still sees it behind
