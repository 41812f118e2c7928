"""The five code scripts (code_batch, put_codes, code_gate, code_settle, redeem_code) against real Redis: every
reply, every key each one touches before and after, the event each success appends, and refusals that write
nothing."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any

import pytest

from gateway.codes.batches import batch_record
from gateway.events import SCHEMA_VERSION
from gateway.keys import ActivityKeys, CodeKeys, KeySpace, WalletKeys
from gateway.scripts.runner import RedisClient, ScriptRunner
from tests.lua.conftest import MakeActivity
from tests.lua.support import (
    DAY,
    HASH_A,
    HASH_B,
    NOW,
    Snapshot,
    changed,
    deliver,
    snapshot,
)

KEYSPACE = KeySpace(8, 4)
ACT = KeySpace.activity("act1")
BUCKET = KeySpace.code_of_bucket(0)
USER = "u1"
WALLET = KEYSPACE.wallet(USER)
FAILS = WALLET.failed_codes_of_user(USER)
IDEM = WALLET.idempotency(USER, "key-1")
LIMIT, WINDOW = 10, 3600
IDEM_TTL = 2 * DAY
PACK = [
    {"template_id": "t1", "count": 2, "valid_days": 7},
    {"template_id": "t2", "count": 1, "valid_from": NOW - 100, "valid_until": NOW + 1000},
]
B1 = batch_record("act1", NOW - 60, NOW + 3600, json.dumps(PACK, separators=(",", ":")))
CODES = [f"{n:02x}" * 32 for n in range(1, 6)]  # stand-ins for keyed hashes (64 hex characters)


def entries(shot: Snapshot, stream: str) -> list[dict[str, str]]:
    if stream not in shot:
        return []
    return [fields for _, fields in shot[stream][1]["entries"]]


def appended(before: Snapshot, after: Snapshot, stream: str) -> list[dict[str, str]]:
    old, new = entries(before, stream), entries(after, stream)
    assert new[: len(old)] == old, "earlier events changed"
    return new[len(old) :]


def value(shot: Snapshot, key: str) -> Any:
    return shot[key][1] if key in shot else None


async def refused(client: RedisClient, call: Awaitable[list[Any]], reply: list[Any]) -> None:
    """The call answers exactly ``reply`` and creates, changes or deletes not one key."""
    before = await snapshot(client)
    assert await call == reply
    assert await snapshot(client) == before


# --- code_batch ------------------------------------------------------------------------------------------


async def code_batch(
    runner: ScriptRunner,
    action: str = "reserve",
    *,
    batch_id: str = "b1",
    count: int = 3,
    activity_id: str = "act1",
    now: int = NOW,
    event_id: str = "ev-b",
    operator: str = "alice",
) -> list[Any]:
    keys = KeySpace.activity(activity_id)
    return await runner.run(
        "code_batch",
        [keys.config, keys.code_batches, keys.seq, keys.events],
        [now, event_id, operator, activity_id, batch_id, count, action],
    )


def assert_batch_event(
    event: dict[str, str], kind: str, *, batch_id: str, count: int, before: int, after: int, seq: str
) -> None:
    assert event == {
        "type": kind,
        "v": str(SCHEMA_VERSION),
        "id": "ev-b",
        "seq": seq,
        "at": str(NOW + 5),
        "activity": "act1",
        "by": "bob",
        "batch": batch_id,
        "count": str(count),
        "before": json.dumps({"stock_left": before}, separators=(",", ":")),
        "after": json.dumps({"stock_left": after}, separators=(",", ":")),
    }


def hot(shot: Snapshot, keys: ActivityKeys = ACT) -> dict[str, str]:
    config: dict[str, str] = shot[keys.config][1]
    return config


async def test_reserve_takes_packs_from_stock(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity
) -> None:
    await make_activity(stock=10)
    before = await snapshot(redis_client)

    reply = await code_batch(runner, count=3, now=NOW + 5, operator="bob")

    assert reply == ["ok", 7]
    after = await snapshot(redis_client)
    assert changed(before, after) == {ACT.config, ACT.code_batches, ACT.seq, ACT.events}
    assert hot(after) == {**hot(before), "stock_left": "7", "reserved": "3"}
    assert hot(after)["taken"] == "0"  # packs held by codes are not claims
    assert value(after, ACT.code_batches) == {"b1": "3"}
    assert int(value(after, ACT.seq)) == int(value(before, ACT.seq)) + 1
    [event] = appended(before, after, ACT.events)
    assert_batch_event(
        event, "codes_reserved", batch_id="b1", count=3, before=10, after=7, seq=value(after, ACT.seq)
    )
    assert all(after[key][2] == -1 for key in changed(before, after))  # nothing expires

    second = await code_batch(runner, batch_id="b2", count=2)
    assert second == ["ok", 5]
    assert await redis_client.hgetall(ACT.config) == {**hot(after), "stock_left": "5", "reserved": "5"}
    assert await redis_client.hgetall(ACT.code_batches) == {"b1": "3", "b2": "2"}


async def test_reserve_of_every_pack_left_is_ok(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity
) -> None:
    await make_activity(stock=4)
    assert await code_batch(runner, count=4) == ["ok", 0]
    assert await redis_client.hget(ACT.config, "stock_left") == "0"
    await refused(redis_client, code_batch(runner, batch_id="b2", count=1), ["state_conflict"])


async def test_reserve_again_is_a_replay_that_writes_nothing(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity
) -> None:
    await make_activity(stock=10)
    assert await code_batch(runner, count=3) == ["ok", 7]
    await refused(redis_client, code_batch(runner, count=3, event_id="ev-again"), ["replay", 7])
    await refused(redis_client, code_batch(runner, count=9, now=NOW + 60), ["replay", 7])


@pytest.mark.parametrize(("status", "count"), [("active", 11), ("paused", 11), ("ended", 1)])
async def test_reserve_refusals_write_nothing(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity, status: str, count: int
) -> None:
    """More packs than are left, or an ended activity: state_conflict."""
    await make_activity(stock=10, status=status)
    await refused(redis_client, code_batch(runner, count=count), ["state_conflict"])


async def test_reserve_on_a_paused_activity_is_allowed(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity
) -> None:
    await make_activity(stock=10, status="paused")
    assert await code_batch(runner, count=10) == ["ok", 0]


async def test_reserve_at_or_after_ends_at_is_refused(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity
) -> None:
    """product.md: a code batch for an activity past ends_at is state_conflict (its codes could never be
    redeemed), whatever its status says; ends_at is exclusive."""
    await make_activity(stock=10, ends_at=NOW + 100)
    for now in (NOW + 100, NOW + 101, NOW + 10 * DAY):
        await refused(redis_client, code_batch(runner, count=1, now=now), ["state_conflict"])
    await refused(redis_client, code_batch(runner, count=0, now=NOW + 100), ["state_conflict"])

    assert await code_batch(runner, count=2, now=NOW + 99) == ["ok", 8]  # the last second of the window


async def test_after_ends_at_a_reserve_replays_and_a_void_gives_the_packs_back(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity
) -> None:
    """The end refuses new batches only: a batch reserved before it replays, and a void (reconcile undoing a
    batch nobody saw) still gives its packs back."""
    await make_activity(stock=10, ends_at=NOW + 5)
    assert await code_batch(runner, count=3, now=NOW + 4) == ["ok", 7]
    await refused(redis_client, code_batch(runner, count=3, now=NOW + 200), ["replay", 7])
    before = await snapshot(redis_client)

    reply = await code_batch(runner, "void", count=3, now=NOW + 5, operator="bob")  # at ends_at: ended

    assert reply == ["ok", 10]
    after = await snapshot(redis_client)
    assert changed(before, after) == {ACT.config, ACT.code_batches, ACT.seq, ACT.events}
    assert hot(after) == {**hot(before), "stock_left": "10", "reserved": "0"}
    assert value(after, ACT.code_batches) == {"b1": "void"}
    [event] = appended(before, after, ACT.events)
    assert_batch_event(
        event, "codes_voided", batch_id="b1", count=3, before=7, after=10, seq=value(after, ACT.seq)
    )


async def test_unknown_activity_is_not_found(runner: ScriptRunner, redis_client: RedisClient) -> None:
    await refused(redis_client, code_batch(runner, activity_id="nope"), ["not_found"])
    await refused(redis_client, code_batch(runner, "void", activity_id="nope"), ["not_found"])


async def test_void_gives_the_packs_back_once(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity
) -> None:
    await make_activity(stock=10)
    assert await code_batch(runner, count=3) == ["ok", 7]
    before = await snapshot(redis_client)

    reply = await code_batch(runner, "void", count=3, now=NOW + 5, operator="bob")

    assert reply == ["ok", 10]
    after = await snapshot(redis_client)
    assert changed(before, after) == {ACT.config, ACT.code_batches, ACT.seq, ACT.events}
    assert hot(after) == {**hot(before), "stock_left": "10", "reserved": "0"}
    assert value(after, ACT.code_batches) == {"b1": "void"}
    [event] = appended(before, after, ACT.events)
    assert_batch_event(
        event, "codes_voided", batch_id="b1", count=3, before=7, after=10, seq=value(after, ACT.seq)
    )

    await refused(redis_client, code_batch(runner, "void", count=3, event_id="ev-2"), ["replay", 10])
    await refused(redis_client, code_batch(runner, count=3), ["state_conflict"])


async def test_void_of_a_never_reserved_batch_blocks_a_later_reserve(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity
) -> None:
    await make_activity(stock=10)
    before = await snapshot(redis_client)

    assert await code_batch(runner, "void", count=3, now=NOW + 5, operator="bob") == ["ok", 10]

    after = await snapshot(redis_client)
    assert changed(before, after) == {ACT.config, ACT.code_batches, ACT.seq, ACT.events}
    assert hot(after)["stock_left"] == "10"
    assert int(hot(after).get("reserved", "0")) == 0
    assert {k: v for k, v in hot(after).items() if k != "reserved"} == hot(before)
    assert value(after, ACT.code_batches) == {"b1": "void"}
    [event] = appended(before, after, ACT.events)
    assert event["type"] == "codes_voided"
    assert (event["batch"], event["before"], event["after"]) == (
        "b1",
        '{"stock_left":10}',
        '{"stock_left":10}',
    )

    await refused(redis_client, code_batch(runner, count=3), ["state_conflict"])
    await refused(redis_client, code_batch(runner, "void", count=3), ["replay", 10])


# --- put_codes -------------------------------------------------------------------------------------------


async def put_codes(
    runner: ScriptRunner,
    hashes: list[str],
    *,
    action: str = "put",
    batch_id: str = "b1",
    batch: str = B1,
    now: int = NOW,
    event_id: str = "ev-p",
    bucket: CodeKeys = BUCKET,
) -> list[Any]:
    return await runner.run(
        "put_codes",
        [bucket.codes, bucket.batches, bucket.seq, bucket.events],
        [now, event_id, batch_id, batch if action == "put" else "", action, ",".join(hashes)],
    )


def code_records(shot: Snapshot) -> dict[str, dict[str, Any]]:
    return {h: json.loads(text) for h, text in (value(shot, BUCKET.codes) or {}).items()}


async def test_put_writes_the_codes_and_the_batch(runner: ScriptRunner, redis_client: RedisClient) -> None:
    before = await snapshot(redis_client)

    assert await put_codes(runner, CODES[:3], now=NOW + 5) == ["ok", 3]

    after = await snapshot(redis_client)
    assert changed(before, after) == {BUCKET.codes, BUCKET.batches, BUCKET.seq, BUCKET.events}
    assert code_records(after) == {h: {"batch": "b1"} for h in CODES[:3]}
    assert value(after, BUCKET.batches) == {"b1": B1}
    assert json.loads(B1) == {
        "activity": "act1",
        "starts_at": NOW - 60,
        "ends_at": NOW + 3600,
        "pack": json.dumps(PACK, separators=(",", ":")),
    }
    assert value(after, BUCKET.seq) == "1"
    assert appended(before, after, BUCKET.events) == [
        {
            "type": "codes_stored",
            "v": str(SCHEMA_VERSION),
            "id": "ev-p",
            "seq": "1",
            "at": str(NOW + 5),
            "batch": "b1",
            "count": "3",
        }
    ]
    assert all(after[key][2] == -1 for key in changed(before, after))


async def test_put_again_keeps_what_is_there(runner: ScriptRunner, redis_client: RedisClient) -> None:
    """HSETNX: a repeated put (a repair) writes only the missing codes and never resets a redeemed one."""
    assert await put_codes(runner, CODES[:3]) == ["ok", 3]
    assert (await redeem_code(runner, CODES[0]))[0] == "ok"
    redeemed = await redis_client.hget(BUCKET.codes, CODES[0])
    before = await snapshot(redis_client)

    assert await put_codes(runner, CODES[:4], event_id="ev-p2") == ["ok", 1]

    after = await snapshot(redis_client)
    assert changed(before, after) == {BUCKET.codes, BUCKET.seq, BUCKET.events}  # the batch record is the same
    assert value(after, BUCKET.codes) == {**value(before, BUCKET.codes), CODES[3]: '{"batch":"b1"}'}
    assert value(after, BUCKET.codes)[CODES[0]] == redeemed
    [event] = appended(before, after, BUCKET.events)
    assert (event["type"], event["count"], event["seq"]) == ("codes_stored", "1", value(after, BUCKET.seq))

    assert await put_codes(runner, CODES[:4], event_id="ev-p3") == ["ok", 0]
    assert await redis_client.hgetall(BUCKET.codes) == value(after, BUCKET.codes)


async def test_drop_removes_only_the_unredeemed_codes(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    assert await put_codes(runner, CODES[:3]) == ["ok", 3]
    b2 = batch_record("act2", NOW - 60, NOW + 60, "[]")
    assert await put_codes(runner, CODES[3:4], batch_id="b2", batch=b2) == ["ok", 1]
    assert (await redeem_code(runner, CODES[0]))[0] == "ok"
    before = await snapshot(redis_client)

    assert await put_codes(runner, CODES[:3], action="drop", now=NOW + 9, event_id="ev-d") == ["ok", 2]

    after = await snapshot(redis_client)
    assert changed(before, after) == {BUCKET.codes, BUCKET.seq, BUCKET.events}
    assert set(value(after, BUCKET.codes)) == {CODES[0], CODES[3]}
    assert value(after, BUCKET.codes)[CODES[0]] == value(before, BUCKET.codes)[CODES[0]]
    assert value(after, BUCKET.batches) == {"b1": B1, "b2": b2}  # redeemed codes still need their batch
    assert appended(before, after, BUCKET.events) == [
        {
            "type": "codes_dropped",
            "v": str(SCHEMA_VERSION),
            "id": "ev-d",
            "seq": value(after, BUCKET.seq),
            "at": str(NOW + 9),
            "batch": "b1",
            "count": "2",
        }
    ]
    # A dropped code is gone: nobody can redeem it.
    await refused(redis_client, redeem_code(runner, CODES[1], user="u2"), ["invalid_code"])

    assert await put_codes(runner, CODES[:3], action="drop", event_id="ev-d2") == ["ok", 0]
    assert set(await redis_client.hkeys(BUCKET.codes)) == {CODES[0], CODES[3]}


async def test_drop_leaves_another_batchs_codes(runner: ScriptRunner, redis_client: RedisClient) -> None:
    assert await put_codes(runner, CODES[:2]) == ["ok", 2]
    b2 = batch_record("act2", NOW - 60, NOW + 60, "[]")
    assert await put_codes(runner, CODES[2:3], batch_id="b2", batch=b2) == ["ok", 1]

    assert await put_codes(runner, CODES[:3], action="drop") == ["ok", 2]

    assert set(await redis_client.hkeys(BUCKET.codes)) == {CODES[2]}


# --- code_gate and code_settle ---------------------------------------------------------------------------


async def code_gate(
    runner: ScriptRunner,
    attempt: str,
    *,
    now: int = NOW,
    key: str = "",
    digest: str = HASH_A,
) -> list[Any]:
    idem = IDEM if key else WALLET.no_idempotency
    return await runner.run("code_gate", [FAILS, idem], [now, attempt, LIMIT, WINDOW, key, digest])


async def code_settle(
    runner: ScriptRunner,
    attempt: str,
    *,
    now: int = NOW,
    key: str = "",
    digest: str = HASH_A,
    answer: str = "",
    wallet: WalletKeys = WALLET,
    event_id: str = "ev-s",
) -> list[Any]:
    idem = IDEM if key else wallet.no_idempotency
    return await runner.run(
        "code_settle",
        [FAILS, idem, wallet.seq, wallet.events],
        [now, event_id, attempt, key, digest, IDEM_TTL, answer],
    )


async def test_gate_counts_the_attempt(runner: ScriptRunner, redis_client: RedisClient) -> None:
    before = await snapshot(redis_client)

    assert await code_gate(runner, "a1", now=NOW + 3) == ["ok"]

    after = await snapshot(redis_client)
    assert changed(before, after) == {FAILS}  # no seq, no event: attempts are rate-limit state only
    assert value(after, FAILS) == [("a1", float(NOW + 3))]
    assert WINDOW - 5 <= await redis_client.ttl(FAILS) <= WINDOW
    assert await code_gate(runner, "a2", now=NOW + 4) == ["ok"]
    assert await redis_client.zrange(FAILS, 0, -1, withscores=True) == [
        ("a1", float(NOW + 3)),
        ("a2", float(NOW + 4)),
    ]


async def test_ten_attempts_then_rate_limited_until_the_oldest_is_an_hour_old(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    for n in range(LIMIT):
        assert await code_gate(runner, f"a{n}", now=NOW + n) == ["ok"], n
    assert await redis_client.zcard(FAILS) == LIMIT

    await refused(redis_client, code_gate(runner, "a10", now=NOW + 100), ["rate_limited", WINDOW - 100])
    await refused(redis_client, code_gate(runner, "a10", now=NOW + 10), ["rate_limited", WINDOW - 10])
    await refused(redis_client, code_gate(runner, "a10", now=NOW + WINDOW - 1), ["rate_limited", 1])
    # The limit also answers before a keyed replay or conflict.
    await redis_client.set(IDEM, f"{HASH_A}|first answer")
    await refused(redis_client, code_gate(runner, "a10", now=NOW + 100, key="key-1"), ["rate_limited", 3500])
    await refused(
        redis_client,
        code_gate(runner, "a10", now=NOW + 100, key="key-1", digest=HASH_B),
        ["rate_limited", 3500],
    )


async def test_the_window_rolls(runner: ScriptRunner, redis_client: RedisClient) -> None:
    """ZREMRANGEBYSCORE with ``now`` moved on: attempts an hour old leave, one at a time."""
    for n in range(LIMIT):
        assert await code_gate(runner, f"a{n}", now=NOW + 10 * n) == ["ok"]
    assert await code_gate(runner, "late", now=NOW + WINDOW - 1) == ["rate_limited", 1]

    assert await code_gate(runner, "b1", now=NOW + WINDOW) == ["ok"]  # a0 (at NOW) has left
    members = await redis_client.zrange(FAILS, 0, -1)
    assert members == [f"a{n}" for n in range(1, LIMIT)] + ["b1"]
    assert await code_gate(runner, "b2", now=NOW + WINDOW + 5) == ["rate_limited", 5]
    assert await code_gate(runner, "b2", now=NOW + WINDOW + 10) == ["ok"]  # a1 (at NOW + 10) has left
    assert "a1" not in await redis_client.zrange(FAILS, 0, -1)

    assert await code_gate(runner, "c1", now=NOW + 10 * WINDOW) == ["ok"]  # everything old is gone
    assert await redis_client.zrange(FAILS, 0, -1) == ["c1"]


async def test_gate_replays_a_keyed_success_and_counts_nothing(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await redis_client.set(IDEM, f"{HASH_A}|the first answer")
    await refused(redis_client, code_gate(runner, "a1", key="key-1"), ["replay", "the first answer"])
    await refused(redis_client, code_gate(runner, "a1", key="key-1", digest=HASH_B), ["idempotency_conflict"])
    assert not await redis_client.exists(FAILS)


async def test_gate_with_an_unused_key_counts(runner: ScriptRunner, redis_client: RedisClient) -> None:
    before = await snapshot(redis_client)
    assert await code_gate(runner, "a1", key="key-1") == ["ok"]
    assert changed(before, await snapshot(redis_client)) == {FAILS}


async def test_settle_takes_the_attempt_back(runner: ScriptRunner, redis_client: RedisClient) -> None:
    assert await code_gate(runner, "a1") == ["ok"]
    assert await code_gate(runner, "a2", now=NOW + 1) == ["ok"]
    before = await snapshot(redis_client)

    assert await code_settle(runner, "a1", answer="unused without a key") == ["ok"]

    after = await snapshot(redis_client)
    assert changed(before, after) == {FAILS}
    assert value(after, FAILS) == [("a2", float(NOW + 1))]
    assert not await redis_client.exists(IDEM, WALLET.no_idempotency, WALLET.seq, WALLET.events)
    await refused(redis_client, code_settle(runner, "a1"), ["ok"])  # twice: nothing more
    await refused(redis_client, code_settle(runner, "never"), ["ok"])


async def test_settle_with_a_key_keeps_the_answer_once(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    assert await code_gate(runner, "a1", key="key-1") == ["ok"]
    before = await snapshot(redis_client)

    assert await code_settle(runner, "a1", key="key-1", answer='{"claim_id":"c1"}', now=NOW + 2) == ["ok"]

    after = await snapshot(redis_client)
    assert changed(before, after) == {FAILS, IDEM, WALLET.seq, WALLET.events}
    assert FAILS not in after
    assert value(after, IDEM) == f'{HASH_A}|{{"claim_id":"c1"}}'
    assert IDEM_TTL - 5 <= await redis_client.ttl(IDEM) <= IDEM_TTL
    assert value(after, WALLET.seq) == "1"
    assert appended(before, after, WALLET.events) == [
        {
            "type": "idempotency_recorded",
            "v": str(SCHEMA_VERSION),
            "id": "ev-s",
            "seq": "1",
            "at": str(NOW + 2),
            "idem": IDEM,
            "idem_hash": HASH_A,
            "answer": '{"claim_id":"c1"}',
            "idem_expires": str(NOW + 2 + IDEM_TTL),
        }
    ]
    # The gate now replays it.
    await refused(redis_client, code_gate(runner, "a2", key="key-1"), ["replay", '{"claim_id":"c1"}'])

    # SET NX: a second settle with the key keeps the first answer and records nothing.
    assert await code_gate(runner, "a3") == ["ok"]
    mid = await snapshot(redis_client)
    assert await code_settle(runner, "a3", key="key-1", digest=HASH_B, answer="other") == ["ok"]
    end = await snapshot(redis_client)
    assert changed(mid, end) == {FAILS}
    assert value(end, IDEM) == value(after, IDEM)


# --- redeem_code -----------------------------------------------------------------------------------------


async def redeem_code(
    runner: ScriptRunner,
    code_hash: str,
    *,
    user: str = USER,
    device: str = "d1",
    blocked: bool = False,
    now: int = NOW,
    claim_id: str = "c1",
    event_id: str = "ev-r",
    bucket: CodeKeys = BUCKET,
) -> list[Any]:
    return await runner.run(
        "redeem_code",
        [bucket.codes, bucket.batches, bucket.counters, bucket.seq, bucket.events],
        [now, event_id, code_hash, user, device, "1" if blocked else "0", claim_id],
    )


def claim_answer(claim_id: str, now: int = NOW) -> str:
    """A claim's answer for PACK, byte for byte as the claim script writes it."""
    coupons = [
        {"coupon_id": f"{claim_id}.1", "template_id": "t1", "valid_from": now, "valid_until": now + 7 * DAY},
        {"coupon_id": f"{claim_id}.2", "template_id": "t1", "valid_from": now, "valid_until": now + 7 * DAY},
        {
            "coupon_id": f"{claim_id}.3",
            "template_id": "t2",
            "valid_from": NOW - 100,
            "valid_until": NOW + 1000,
        },
    ]
    return json.dumps({"claim_id": claim_id, "coupons": coupons}, separators=(",", ":"))


async def stored(runner: ScriptRunner, batch: str = B1) -> None:
    assert await put_codes(runner, CODES[:3], batch=batch) == ["ok", 3]


async def test_redeem_turns_the_code_into_the_pack(runner: ScriptRunner, redis_client: RedisClient) -> None:
    await stored(runner)
    before = await snapshot(redis_client)

    reply = await redeem_code(runner, CODES[0], now=NOW + 5, claim_id="c1", device="d9")

    answer = claim_answer("c1", NOW + 5)
    assert reply == ["ok", answer, "act1"]
    after = await snapshot(redis_client)
    assert changed(before, after) == {BUCKET.codes, BUCKET.counters, BUCKET.seq, BUCKET.events}
    assert code_records(after) == {
        **code_records(before),
        CODES[0]: {
            "batch": "b1",
            "user": USER,
            "claim": "c1",
            "answer": answer,
            "activity": "act1",
            "at": NOW + 5,
        },
    }
    assert value(after, BUCKET.counters) == {"act1": "1"}
    assert int(value(after, BUCKET.seq)) == int(value(before, BUCKET.seq)) + 1
    assert appended(before, after, BUCKET.events) == [
        {
            "type": "code_redeemed",
            "v": str(SCHEMA_VERSION),
            "id": "ev-r",
            "seq": value(after, BUCKET.seq),
            "at": str(NOW + 5),
            "code": CODES[0],
            "batch": "b1",
            "activity": "act1",
            "claim_id": "c1",
            "user": USER,
            "device": "d9",
            "answer": answer,
        }
    ]
    assert all(after[key][2] == -1 for key in changed(before, after))
    # The answer is a claim's: deliver takes it as it is.
    assert await deliver(runner, WALLET, USER, "act1", answer, now=NOW + 5) == ["ok"]
    assert await redis_client.zrange(WALLET.user_index(USER), 0, -1) == ["c1.1", "c1.2", "c1.3"]

    assert (await redeem_code(runner, CODES[1], user="u2", claim_id="c2"))[0] == "ok"
    assert await redis_client.hgetall(BUCKET.counters) == {"act1": "2"}


async def test_the_same_user_again_gets_the_first_answer(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await stored(runner)
    first = await redeem_code(runner, CODES[0], claim_id="c1")
    assert first[0] == "ok"
    replay = ["replay", first[1], "act1"]

    await refused(redis_client, redeem_code(runner, CODES[0], claim_id="c-other", now=NOW + 60), replay)
    await refused(redis_client, redeem_code(runner, CODES[0], claim_id="c3", device="d2"), replay)
    # The replay comes before the domain's checks: after the window, and with a blocklist verdict.
    await refused(redis_client, redeem_code(runner, CODES[0], claim_id="c4", now=NOW + 7200), replay)
    await refused(redis_client, redeem_code(runner, CODES[0], claim_id="c5", blocked=True), replay)


async def test_a_missing_code_and_another_users_code_are_one_answer(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await stored(runner)
    assert (await redeem_code(runner, CODES[0], user="u1"))[0] == "ok"

    await refused(redis_client, redeem_code(runner, CODES[0], user="u2", claim_id="c2"), ["invalid_code"])
    await refused(redis_client, redeem_code(runner, CODES[4], user="u2", claim_id="c2"), ["invalid_code"])
    await refused(redis_client, redeem_code(runner, "f" * 64, user="u1", claim_id="c2"), ["invalid_code"])


async def test_blocked_writes_nothing(runner: ScriptRunner, redis_client: RedisClient) -> None:
    await stored(runner)
    await refused(redis_client, redeem_code(runner, CODES[0], blocked=True), ["blocked"])
    assert (await redeem_code(runner, CODES[0]))[0] == "ok"  # the code was not used up


@pytest.mark.parametrize(
    ("now", "outcome"),
    [(NOW - 61, "not_started"), (NOW - 3600, "not_started"), (NOW + 3600, "ended"), (NOW + 9 * DAY, "ended")],
)
async def test_outside_the_copied_window(
    runner: ScriptRunner, redis_client: RedisClient, now: int, outcome: str
) -> None:
    await stored(runner)
    await refused(redis_client, redeem_code(runner, CODES[0], now=now), [outcome])
    assert (await redeem_code(runner, CODES[0], now=NOW - 60))[0] == "ok"  # starts_at is inclusive


async def test_ends_at_is_exclusive(runner: ScriptRunner, redis_client: RedisClient) -> None:
    await stored(runner)
    assert (await redeem_code(runner, CODES[0], now=NOW + 3599))[0] == "ok"
    await refused(redis_client, redeem_code(runner, CODES[1], now=NOW + 3600), ["ended"])
