"""Restore: Redis rebuilt from the ledger, on an empty Redis and on one that fell behind; what it leaves alone;
and the ``claimgate reconcile`` / ``restore`` commands."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest

from gateway.catalog.campaign import StockChange
from gateway.catalog.rebuild import PART_SIZE
from gateway.catalog.retirement import Reviver
from gateway.claim.blocklist import Blocklist
from gateway.claim.grants import GrantBody, GrantService
from gateway.devstack.valkey import ValkeyServer
from gateway.keys import BLOCKLIST, FENCE_CHECKED, stable_bucket
from gateway.outcomes import Outcome
from gateway.scripts import ledger_check
from gateway.scripts.fence import Fence
from tests.conftest import flush_redis
from tests.lua.support import changed, snapshot
from tests.recovery.support import (
    FIXED_PARTITIONS,
    KEYS,
    OPERATOR,
    admin,
    build_sale,
    claim,
    cli,
    marks,
    new_activity,
    persist,
    reconciler,
    redis_state,
    refusal,
)
from worker.consumer import Consumer
from worker.recovery.restore import Restored, restore

LEVEL = "level with the ledger (use --force to rebuild anyway)"
NOTHING = "nothing to restore"


async def restore_all(consumer: Consumer, **options: Any) -> list[Restored]:
    return await restore(
        consumer.client,
        consumer.pool,
        KEYS,
        idempotency_ttl=consumer.settings.claim.idempotency_ttl_seconds,
        **options,
    )


async def empty_redis(consumer: Consumer) -> None:
    """Redis lost everything (its run id is the same: the tests' fence stays open)."""
    flush_redis(consumer.settings.redis.url)
    await consumer.runner.load_all()


def same_state(before: dict[str, tuple[str, Any, int]], after: dict[str, tuple[str, Any, int]]) -> None:
    """Every key, type and value equal; an expiry within 2 s (the ledger keeps expiries in whole seconds)."""
    assert sorted(after) == sorted(before)
    for key, (kind, value, expires) in before.items():
        assert after[key][:2] == (kind, value), key
        if expires == -1:
            assert after[key][2] == -1, key
        else:
            assert abs(after[key][2] - expires) <= 2000, (key, expires, after[key][2])


async def ordinals(consumer: Consumer, activity_id: str) -> list[int]:
    rows = await consumer.pool.fetch(
        "SELECT ordinal FROM claims WHERE activity_id = $1 ORDER BY ordinal", activity_id
    )
    return [r["ordinal"] for r in rows]


async def conflicts(consumer: Consumer) -> int:
    found: int = await consumer.pool.fetchval("SELECT count(*) FROM conflicts")
    return found


# --- an empty Redis --------------------------------------------------------------------------------------------


async def test_restore_on_an_empty_redis_reproduces_everything(consumer: Consumer) -> None:
    ttl = consumer.settings.claim.idempotency_ttl_seconds
    # Patched, restocked, paused and resumed, claimed, granted; the blocklist changed.
    sale = await build_sale(consumer, grants=True)
    sold_out = await new_activity(consumer, stock=3, budget=1_000)  # a pack's face value: 2 x 100
    assert await admin(consumer).restock(sold_out, StockChange(-1), OPERATOR, int(time.time())) == 2
    await claim(consumer, sold_out.id, "s1", "ds1")
    await claim(consumer, sold_out.id, "s2", "ds2")
    ended = await new_activity(consumer, stock=5)
    await claim(consumer, ended.id, "e1", "de1")
    assert await admin(consumer).set_status(ended.id, "end", OPERATOR, int(time.time())) == "ended"
    listed = await new_activity(consumer, stock=5, allow=["a1", "a2", "a3"], per_device_limit=1)
    await claim(consumer, listed.id, "a1", "da1")
    assert await admin(consumer).set_status(listed.id, "pause", OPERATOR, int(time.time())) == "paused"
    await persist(consumer)
    assert (await reconciler(consumer).run()).differences == []
    before = await redis_state(consumer.client)
    ledger_marks = await marks(consumer)

    await empty_redis(consumer)
    assert sorted(await ledger_check.partitions_behind(consumer.client, consumer.pool)) == sorted(
        ledger_marks
    )
    done = await restore_all(consumer, operator="ops")

    # Exactly the partitions the ledger has state for are restored, each seq one above its mark (the event).
    assert sorted(d.partition for d in done) == sorted(
        r["partition"] for r in await consumer.pool.fetch("SELECT partition FROM streams")
    )
    restored = {d.partition: d for d in done if d.action == "restored"}
    assert {d.action for d in done if d.partition not in restored} == {NOTHING}
    assert sorted(restored) == sorted(ledger_marks)
    for partition, item in restored.items():
        assert item.seq == ledger_marks[partition] + 1
        assert await consumer.client.get(f"{partition}:seq") == str(item.seq)
        assert item.drained == 0  # the stream was empty
    assert restored[sale.keys.tag].counts == {"users": 5, "devices": 2, "records": 4}
    assert restored[BLOCKLIST.tag].counts == {"entries": 2}
    coupons_per_bucket = Counter(
        KEYS.wallet(u).tag for u in ("u1", "u1", "u2", "u3", "g1", "g2", "s1", "s2", "e1", "a1")
    )
    users_per_bucket = Counter(
        KEYS.wallet(u).tag for u in ("u1", "u2", "u3", "g1", "g2", "s1", "s2", "e1", "a1")
    )
    for bucket, n in coupons_per_bucket.items():
        assert restored[bucket].counts == {"coupons": 2 * n, "users": users_per_bucket[bucket]}

    # Config (patched fields, status, stock), counts, allow-lists, coupons and indexes, idempotency and grant
    # call records (with their expiry), the blocklist: exactly as before.
    after = await redis_state(consumer.client)
    same_state(before, after)
    config = await consumer.client.hgetall(sale.keys.config)
    assert (config["name"], config["status"], config["stock_left"], config["taken"]) == (
        "renamed",
        "active",
        "1",
        "6",
    )
    assert (config["per_user_limit"], config["per_device_limit"]) == ("2", "3")
    grant_call = sale.keys.idempotency("grant-call\x1fbob", "gk1")
    assert after[grant_call][1].endswith("|" + sale.grant_answer.decode())
    assert 0 < after[grant_call][2] - int(time.time() * 1000) <= ttl * 1000
    assert await ledger_check.partitions_behind(consumer.client, consumer.pool) == []

    # The gateway's view: the blocklist copy, a keyed retry, a keyed grant retry, limits, sold out, paused.
    copy = Blocklist()
    assert await copy.refresh(consumer.client)
    assert (copy.users, copy.devices) == (frozenset({"bad1"}), frozenset({"baddev"}))
    replay = await claim(consumer, sale.activity.id, "u1", "d1", key="k1")
    assert (replay.outcome, replay.answer) == (Outcome.REPLAY, sale.answers["u1"])
    grants = GrantService(
        consumer.runner,
        KEYS,
        consumer.claims,
        Blocklist(),
        ttl,
        Reviver(consumer.pool, consumer.runner, KEYS),
    )
    assert await grants.grant(sale.activity.id, GrantBody(["g1", "g2"]), "bob", "gk1") == sale.grant_answer
    assert await refusal(consumer, sale.activity.id, "u1", "d9") == Outcome.LIMIT_REACHED  # 2 of 2
    assert await refusal(consumer, sale.activity.id, "u9", "d1") == Outcome.LIMIT_REACHED  # d1: 3 of 3
    assert await refusal(consumer, sold_out.id, "s3", "ds3") == Outcome.SOLD_OUT
    sold_out_config = await consumer.client.hgetall(KEYS.activity(sold_out.id).config)
    assert (sold_out_config["stock_left"], sold_out_config["taken"], sold_out_config["budget"]) == (
        "0",
        "2",
        "1000",
    )
    assert await refusal(consumer, ended.id, "e2", "de2") == Outcome.ENDED
    assert await refusal(consumer, listed.id, "a2", "da2") == Outcome.PAUSED
    await admin(consumer).set_status(listed.id, "resume", OPERATOR, int(time.time()))
    assert await refusal(consumer, listed.id, "x1", "dx1") == Outcome.NOT_ELIGIBLE  # not on the allow-list
    assert await refusal(consumer, listed.id, "a1", "dz") == Outcome.LIMIT_REACHED
    assert await refusal(consumer, listed.id, "a2", "da1") == Outcome.LIMIT_REACHED  # device limit 1
    assert (await claim(consumer, listed.id, "a2", "da2")).outcome == Outcome.OK
    assert (await claim(consumer, sale.activity.id, "u9", "d9")).outcome == Outcome.OK  # the last pack
    assert await refusal(consumer, sale.activity.id, "u8", "d8") == Outcome.SOLD_OUT

    # The restored events reach the audit; the new claims take the next units; all agrees.
    await persist(consumer)
    rows = await consumer.pool.fetch(
        "SELECT partition, seq, operator, target, after::text AS after FROM audit WHERE action = 'restore'"
    )
    assert sorted((r["partition"], r["seq"], r["operator"], r["target"]) for r in rows) == sorted(
        (p, d.seq, "ops", p) for p, d in restored.items()
    )
    summaries = {r["partition"]: json.loads(r["after"]) for r in rows}
    assert summaries[sale.keys.tag] == {
        "at_least": ledger_marks[sale.keys.tag],
        "users": 5,
        "devices": 2,
        "records": 4,
    }
    assert await ordinals(consumer, sale.activity.id) == [1, 2, 3, 4, 5, 6, 7]
    assert await ordinals(consumer, listed.id) == [1, 2]
    assert await conflicts(consumer) == 0
    report = await reconciler(consumer).run()
    assert report.differences == [], report.lines()


async def test_restore_delivers_claims_the_ledger_holds_no_coupons_for(consumer: Consumer) -> None:
    """A claim persisted whose delivery never reached the ledger: restore delivers it (after the wallets)."""
    activity = await new_activity(consumer, stock=5)
    await claim(consumer, activity.id, "u1", "d1")
    await persist(consumer)
    [claim_id] = [r["claim_id"] for r in await consumer.pool.fetch("SELECT claim_id FROM claims")]
    await consumer.pool.execute("DELETE FROM coupon_events")
    await consumer.pool.execute("DELETE FROM coupons")

    await empty_redis(consumer)
    done = await restore_all(consumer)

    wallet = KEYS.wallet("u1")
    # The wallet has a mark (its delivery was persisted) and nothing the ledger still holds: rebuilt empty,
    # then the delivery fills it.
    assert sorted(d.partition for d in done if d.action == "restored") == sorted(
        [KEYS.activity(activity.id).tag, wallet.tag]
    )
    assert [d.counts for d in done if d.partition == wallet.tag] == [{"coupons": 0, "users": 0}]
    assert await consumer.client.zrange(wallet.user_index("u1"), 0, -1) == [f"{claim_id}.1", f"{claim_id}.2"]
    await persist(consumer)
    assert await consumer.pool.fetchval("SELECT count(*) FROM coupons WHERE claim_id = $1", claim_id) == 2
    assert (await reconciler(consumer).run()).differences == []


# --- what restore leaves alone -------------------------------------------------------------------------------


async def test_restore_leaves_partitions_level_with_the_ledger_unless_forced(consumer: Consumer) -> None:
    sale = await build_sale(consumer)
    await persist(consumer)
    await consumer.client.hincrby(sale.keys.user_counts, "u1", 5)  # drift, seq level: not restore's business
    before = await snapshot(consumer.client)

    done = await restore_all(consumer)

    with_seq = {sale.keys.tag, BLOCKLIST.tag} | {KEYS.wallet(u).tag for u in ("u1", "u2", "u3")}
    assert {d.partition: d.action for d in done} == {
        d.partition: LEVEL if d.partition in with_seq else NOTHING for d in done
    }
    assert len(done) == FIXED_PARTITIONS + 1
    assert await snapshot(consumer.client) == before  # nothing written, not even an event

    forced = await restore_all(consumer, force=True)

    assert {d.action for d in forced} == {"restored"}  # every registered partition, empty ones too
    assert len(forced) == FIXED_PARTITIONS + 1
    assert await consumer.client.hget(sale.keys.user_counts, "u1") == "2"
    assert await consumer.client.get(sale.keys.seq) == "10"
    assert await consumer.client.get(KEYS.code_of_bucket(0).seq) == "1"
    await persist(consumer)
    report = await reconciler(consumer).run()
    assert report.differences == [], report.lines()


async def test_restore_of_a_named_partition_touches_only_that_partition(consumer: Consumer) -> None:
    sale = await build_sale(consumer)
    other = await new_activity(consumer, stock=5)
    await claim(consumer, other.id, "o1", "do1")
    await persist(consumer)
    other_keys = KEYS.activity(other.id)
    for keys, seq in ((sale.keys, 2), (other_keys, 1)):  # both fell behind
        await consumer.client.delete(keys.user_counts)
        await consumer.client.set(keys.seq, seq)
    behind = sorted([sale.keys.tag, other_keys.tag])
    assert sorted(await ledger_check.partitions_behind(consumer.client, consumer.pool)) == behind
    record = sale.keys.idempotency("u1", "k1")
    before = await snapshot(consumer.client)

    done = await restore_all(consumer, named=[sale.keys.tag])

    assert done == [
        Restored(sale.keys.tag, "restored", 9, 10, {"users": 3, "devices": 2, "records": 1}),
    ]
    after = await snapshot(consumer.client)
    # The record is written again (its expiry now in whole seconds), with the same value.
    assert changed(before, after) - {record} == {sale.keys.user_counts, sale.keys.seq, sale.keys.events}
    assert after[record][:2] == before[record][:2]
    assert await consumer.client.hgetall(sale.keys.user_counts) == {"u1": "2", "u2": "1", "u3": "1"}
    assert await ledger_check.partitions_behind(consumer.client, consumer.pool) == [other_keys.tag]


async def test_restore_of_an_unknown_partition_is_refused(consumer: Consumer) -> None:
    await new_activity(consumer)
    before = await snapshot(consumer.client)
    with pytest.raises(ValueError, match=r"not a registered partition: \{a:nope\}"):
        await restore_all(consumer, named=["{a:nope}"])
    assert await snapshot(consumer.client) == before


# --- a Redis behind the ledger ---------------------------------------------------------------------------------


async def test_restore_when_redis_fell_behind_sells_no_unit_twice(consumer: Consumer) -> None:
    activity = await new_activity(consumer, stock=8, per_user_limit=1)
    keys = KEYS.activity(activity.id)
    users = [f"u{i}" for i in range(6)]
    late_wallets = {KEYS.wallet(u) for u in users[3:]}  # the wallets the later claims wrote to
    partition_keys = [keys.config, keys.user_counts, keys.device_counts, keys.seq, keys.events]
    for wallet in late_wallets:
        partition_keys += [wallet.coupons, wallet.seq, wallet.events]
        partition_keys += [wallet.user_index(u) for u in users if KEYS.wallet(u) == wallet]
    for i in range(3):
        await claim(consumer, activity.id, f"u{i}", f"d{i}")
    await persist(consumer)
    copy = {key: await consumer.client.dump(key) for key in partition_keys}  # the state an older AOF holds
    for i in range(3, 5):
        await claim(consumer, activity.id, f"u{i}", f"d{i}")
    first = await claim(consumer, activity.id, "u5", "d5", key="k5")
    await persist(consumer)
    copy[keys.idempotency("u5", "k5")] = None  # the older copy had no such record
    # A rolled-back Redis restarts with a new run id, which no process checked: no record vouches for it.
    copy[FENCE_CHECKED] = None
    for key, value in copy.items():  # Redis comes back with the older copy of those partitions
        if value is None:
            await consumer.client.delete(key)
        else:
            await consumer.client.restore(key, 0, value, replace=True)
    assert await consumer.client.hget(keys.config, "taken") == "3"
    assert await consumer.client.zrange(KEYS.wallet("u5").user_index("u5"), 0, -1) == []
    behind = sorted([keys.tag, *(w.tag for w in late_wallets)])
    assert sorted(await ledger_check.partitions_behind(consumer.client, consumer.pool)) == behind
    fence = Fence()
    await ledger_check.check(consumer.client, consumer.pool, fence)
    assert not fence.is_open
    assert fence.reason.startswith(f"Redis is behind the ledger in {len(behind)} partition(s): ")
    ledger_marks = await marks(consumer)

    done = await restore_all(consumer)

    assert sorted((d.partition, d.action, d.seq) for d in done if d.action == "restored") == [
        (p, "restored", ledger_marks[p] + 1) for p in behind
    ]
    assert ledger_marks[keys.tag] == 7
    coupons = {
        r["user_id"]: r["claim_id"] for r in await consumer.pool.fetch("SELECT user_id, claim_id FROM claims")
    }
    for user in users:  # every wallet holds what the ledger holds
        wallet = KEYS.wallet(user)
        assert await consumer.client.zrange(wallet.user_index(user), 0, -1) == [
            f"{coupons[user]}.1",
            f"{coupons[user]}.2",
        ]
    assert await consumer.client.hgetall(keys.user_counts) == {f"u{i}": "1" for i in range(6)}
    assert await consumer.client.hgetall(keys.device_counts) == {f"d{i}": "1" for i in range(6)}
    config = await consumer.client.hgetall(keys.config)
    assert (config["stock_left"], config["taken"]) == ("2", "6")
    assert await ledger_check.partitions_behind(consumer.client, consumer.pool) == []
    await ledger_check.check(consumer.client, consumer.pool, fence)
    assert fence.is_open

    assert await refusal(consumer, activity.id, "u4", "d4") == Outcome.LIMIT_REACHED  # counted again
    replay = await claim(consumer, activity.id, "u5", "d5", key="k5")  # its record is back: no second pack
    assert (replay.outcome, replay.answer) == (Outcome.REPLAY, first.answer)
    sold = [await claim(consumer, activity.id, f"x{i}", f"dx{i}") for i in range(2)]
    assert [r.outcome for r in sold] == [Outcome.OK, Outcome.OK]
    assert await refusal(consumer, activity.id, "x2", "dx2") == Outcome.SOLD_OUT
    await persist(consumer)
    assert await ordinals(consumer, activity.id) == list(range(1, 9))  # stock 8: each unit sold once
    assert await conflicts(consumer) == 0
    assert (await reconciler(consumer).run()).differences == []


async def test_without_restore_a_behind_redis_would_sell_units_again(consumer: Consumer) -> None:
    """The counterpart of the test above, so it cannot pass vacuously: the same rollback without restore
    sells ordinals the ledger holds, and the ledger's check refuses them."""
    activity = await new_activity(consumer, stock=3, per_user_limit=1)
    keys = KEYS.activity(activity.id)
    partition_keys = [keys.config, keys.user_counts, keys.device_counts, keys.seq, keys.events]
    copy = {key: await consumer.client.dump(key) for key in partition_keys}
    await claim(consumer, activity.id, "u0", "d0")
    await persist(consumer)
    for key, value in copy.items():  # the counts did not exist yet
        if value is None:
            await consumer.client.delete(key)
        else:
            await consumer.client.restore(key, 0, value, replace=True)
    await claim(consumer, activity.id, "u1", "d1")  # the tests' fence is open: nothing stops it
    await persist(consumer)
    assert await ordinals(consumer, activity.id) == [1]
    assert await conflicts(consumer) == 1


# --- a large partition, in parts ------------------------------------------------------------------------------


async def test_a_large_partition_is_restored_in_parts(consumer: Consumer) -> None:
    users = [f"user{i:05d}" for i in range(2_500)]
    activity = await new_activity(consumer, stock=3_000, allow=users, coupons=1)
    keys = KEYS.activity(activity.id)
    await persist(consumer)
    now = int(time.time())
    claim_ids = [f"c{i:05d}" for i in range(len(users))]
    wallets = [KEYS.wallet(u).tag for u in users]
    answers = [
        json.dumps(
            {
                "claim_id": c,
                "coupons": [
                    {"coupon_id": f"{c}.1", "template_id": "t", "valid_from": now, "valid_until": now + 60}
                ],
            }
        )
        for c in claim_ids
    ]
    await consumer.pool.execute(
        "INSERT INTO claims (claim_id, activity_id, user_id, device_id, channel, mode, operator, answer,"
        " claimed_at, event_id, partition, seq, ordinal)"
        " SELECT c, $2, u, d, '', 'claim', NULL, a, $3, 'e' || c, $4, o + 1, o"
        " FROM unnest($1::text[], $5::text[], $6::text[], $7::text[]) WITH ORDINALITY AS t(c, u, d, a, o)",
        claim_ids,
        activity.id,
        now,
        keys.tag,
        users,
        [f"dev{i % 1_200}" for i in range(len(users))],
        answers,
    )
    await consumer.pool.execute(
        "INSERT INTO coupons (coupon_id, user_id, activity_id, template_id, claim_id, status, version, valid_from,"
        " valid_until, updated_at, partition)"
        " SELECT c || '.1', u, $2, 't', c, 'available', 1, $3::bigint, $3::bigint + 60, $3::bigint, w"
        " FROM unnest($1::text[], $4::text[], $5::text[]) AS t(c, u, w)",
        claim_ids,
        activity.id,
        now,
        users,
        wallets,
    )
    blocked = [f"b{i:05d}" for i in range(2_100)]
    await consumer.pool.execute(
        "INSERT INTO blocklist (kind, id, present, added_at, by, seq) SELECT 'user', b, true, $2, 'ops', 1"
        " FROM unnest($1::text[]) AS b",
        blocked,
        now,
    )
    new_marks = {keys.tag: len(users) + 1, BLOCKLIST.tag: 1, **{w: 1 for w in set(wallets)}}
    await consumer.pool.executemany(
        "INSERT INTO partition_marks (partition, seq) VALUES ($1, $2)"
        " ON CONFLICT (partition) DO UPDATE SET seq = excluded.seq",
        list(new_marks.items()),
    )

    await empty_redis(consumer)
    done = await restore_all(consumer)

    assert {d.partition for d in done if d.action == "restored"} == set(new_marks)
    assert await consumer.client.hgetall(keys.user_counts) == {u: "1" for u in users}
    assert await consumer.client.hgetall(keys.device_counts) == {
        f"dev{i}": str(3 if i < 100 else 2) for i in range(1_200)
    }
    assert await consumer.client.smembers(keys.allow_list) == set(users)
    config = await consumer.client.hgetall(keys.config)
    assert (config["stock_left"], config["taken"]) == ("500", "2500")
    assert await consumer.client.smembers(BLOCKLIST.users) == set(blocked)
    assert await consumer.client.hlen(BLOCKLIST.entries) == len(blocked)
    parts = -(-2 * len(blocked) // PART_SIZE)  # entries go as (name, record) pairs
    assert await consumer.client.get(BLOCKLIST.version) == str(parts)
    for user in (users[0], users[1_234], users[-1]):
        wallet = KEYS.wallet(user)
        claim_id = claim_ids[users.index(user)]
        assert await consumer.client.zrange(wallet.user_index(user), 0, -1) == [f"{claim_id}.1"]
    assert sum([await consumer.client.hlen(f"{w}:coupons") for w in set(wallets)]) == len(users)
    assert stable_bucket(users[0], KEYS.wallet_buckets) == int(KEYS.wallet(users[0]).tag[3:-1])
    await persist(consumer)
    report = await reconciler(consumer).run()
    assert report.differences == [], report.lines()[:5]


# --- the commands ------------------------------------------------------------------------------------------------


async def test_the_reconcile_and_restore_commands(
    consumer: Consumer, valkey: ValkeyServer, migrated: str
) -> None:
    sale = await build_sale(consumer)
    await persist(consumer)

    clean = cli("reconcile", valkey.url, migrated)
    assert (clean.returncode, clean.stderr) == (0, "")
    lines = clean.stdout.splitlines()
    assert lines[0].startswith(
        f"partitions checked: {FIXED_PARTITIONS + 1}; stream entries applied to the ledger (again if already there): "
    )
    assert lines[-1] == "differences: 0"
    assert len(lines) == 2

    await consumer.client.hincrby(sale.keys.user_counts, "u1", 5)
    seeded = cli("reconcile", valkey.url, migrated, "--partition", sale.keys.tag)
    assert seeded.returncode == 1, seeded.stdout + seeded.stderr
    assert seeded.stdout.splitlines()[1:] == [
        f"difference: {sale.keys.tag} user_count: {sale.keys.user_counts}[u1] redis='7' ledger='2'",
        "differences: 1",
    ]
    assert seeded.stdout.startswith("partitions checked: 1;")

    await empty_redis(consumer)
    restored = cli("restore", valkey.url, migrated, "--operator", "night-shift")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    buckets = {KEYS.wallet(u).tag for u in ("u1", "u2", "u3")}
    assert restored.stderr == ""  # no "run restore" log from restore itself
    out = restored.stdout.splitlines()
    assert (
        f"{sale.keys.tag}: restored (seq 10; users 3, devices 2, records 1); 0 stream entries drained" in out
    )
    assert f"{BLOCKLIST.tag}: restored (seq 4; entries 2); 0 stream entries drained" in out
    assert f"{KEYS.code_of_bucket(0).tag}: {NOTHING}; 0 stream entries drained" in out
    assert out[-1] == f"restored {2 + len(buckets)} of {FIXED_PARTITIONS + 1} partition(s)"
    assert len(out) == FIXED_PARTITIONS + 2
    assert await consumer.client.hget(sale.keys.user_counts, "u1") == "2"

    again = cli("reconcile", valkey.url, migrated)
    assert again.returncode == 0, again.stdout
    assert again.stdout.splitlines()[-1] == "differences: 0"
    audit = await consumer.pool.fetch("SELECT operator FROM audit WHERE action = 'restore'")
    assert [r["operator"] for r in audit] == ["night-shift"] * (2 + len(buckets))  # reconcile drained them
    level = cli("restore", valkey.url, migrated)
    assert level.returncode == 0
    assert f"{sale.keys.tag}: {LEVEL}; 1 stream entries drained" in level.stdout.splitlines()
    assert level.stdout.splitlines()[-1] == f"restored 0 of {FIXED_PARTITIONS + 1} partition(s)"
