"""The expiry sweep's script (sweep_expired) against real Redis: its reply, and every key it touches (the coupon
record, the expiring and finished indexes, seq and the event with all its fields) for a coupon available past its
validity, one a live lock holds, one whose lock lapsed, a redeemed one, an expired one, a missing record, an entry
due early, and its limit; nothing else is ever written."""

from __future__ import annotations

import json
from typing import Any

from gateway.events import SCHEMA_VERSION
from gateway.scripts.calls.checkout import ExpiryKeys
from gateway.scripts.runner import RedisClient, ScriptRunner
from tests.lua.support import NOW, Snapshot, changed, snapshot
from tests.lua.test_checkout_scripts import (
    COUPON,
    COUPON_2,
    COUPON_3,
    DISCOUNT,
    LOCK_SECONDS,
    ORDER,
    WALLET,
    appended,
    coupon_in,
    deliver_coupon,
    lock,
    ok,
    record,
    redeem,
    release,
    sweep,
    unchanged,
    value_of,
)

UNTIL = NOW + 100  # the coupons' validity ends here (they were delivered valid from NOW - DAY)
SWEPT = {WALLET.coupons, WALLET.expiring, WALLET.finished, WALLET.seq, WALLET.events}  # an expiry's keys


async def sweep_expired(runner: ScriptRunner, *, now: int, limit: int = 100) -> list[Any]:
    return await runner.run("sweep_expired", ExpiryKeys.of(WALLET), [now, limit])


def expired_event(seq: int, at: int, coupon: dict[str, Any], *, coupon_id: str = COUPON) -> dict[str, str]:
    """The sweep's ledger entry, every field."""
    entry = {
        "type": "expired",
        "v": SCHEMA_VERSION,
        "id": f"expired:{coupon_id}",
        "seq": seq,
        "at": at,
        "user": coupon["user"],
        "activity": coupon["activity"],
        "coupon": coupon_id,
        "template": coupon["template"],
        "claim": coupon["claim"],
        "valid_from": coupon["valid_from"],
        "valid_until": coupon["valid_until"],
        "version": coupon["version"],
    }
    return {name: str(value) for name, value in entry.items()}


def scores(snap: Snapshot, key: str) -> list[tuple[str, float]] | None:
    found: list[tuple[str, float]] | None = value_of(snap, key)
    return found


async def test_an_available_coupon_past_its_validity_is_expired_and_final(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await deliver_coupon(runner, valid_until=UNTIL)  # seq 1
    before = await snapshot(redis_client)
    assert scores(before, WALLET.expiring) == [(COUPON, float(UNTIL))]
    at = UNTIL + 30  # the sweep comes a little after the validity's end

    assert await sweep_expired(runner, now=at) == ["ok", 1, 1]

    after = await snapshot(redis_client)
    assert changed(before, after) == SWEPT
    expired = record("expired", 2, valid_until=UNTIL)
    assert coupon_in(after) == expired
    assert scores(after, WALLET.expiring) is None  # handled: out of the index
    assert scores(after, WALLET.finished) == [(COUPON, float(UNTIL))]  # final at its validity's end
    assert value_of(after, WALLET.seq) == "2"
    assert appended(before, after) == [expired_event(2, at, expired)]


async def test_nothing_due_writes_nothing(runner: ScriptRunner, redis_client: RedisClient) -> None:
    await deliver_coupon(runner, valid_until=UNTIL)

    assert await unchanged(redis_client, sweep_expired(runner, now=UNTIL - 1)) == ["ok", 0, 0]


async def test_a_coupon_at_its_validitys_very_end_is_due(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    """As readers show it (shown_status): expired once ``valid_until <= now``."""
    await deliver_coupon(runner, valid_until=UNTIL)

    assert await sweep_expired(runner, now=UNTIL) == ["ok", 1, 1]

    assert coupon_in(await snapshot(redis_client))["status"] == "expired"


async def test_a_live_lock_puts_the_coupon_back_until_its_deadline_then_it_is_final_when_found_unlocked(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await deliver_coupon(runner, valid_until=UNTIL)
    await ok(lock(runner, now=NOW))  # held until NOW + 600, past the validity
    deadline = NOW + LOCK_SECONDS
    before = await snapshot(redis_client)

    assert await sweep_expired(runner, now=UNTIL) == ["ok", 0, 1]

    after = await snapshot(redis_client)
    assert changed(before, after) == {WALLET.expiring}
    assert scores(after, WALLET.expiring) == [(COUPON, float(deadline))]
    assert coupon_in(after) == coupon_in(before)  # still locked, as it was
    assert await unchanged(redis_client, sweep_expired(runner, now=deadline - 1)) == ["ok", 0, 0]

    assert (await release(runner, now=UNTIL + 50))[0] == "ok"  # available again, past its validity
    released = await snapshot(redis_client)
    assert coupon_in(released)["version"] == 3

    assert await sweep_expired(runner, now=deadline + 7) == ["ok", 1, 1]

    final = await snapshot(redis_client)
    assert changed(released, final) == SWEPT
    expired = record("expired", 4, valid_until=UNTIL)
    assert coupon_in(final) == expired
    assert scores(final, WALLET.expiring) is None
    assert scores(final, WALLET.finished) == [(COUPON, float(deadline + 7))]  # when found unlocked
    assert appended(released, final) == [expired_event(4, deadline + 7, expired)]


async def test_a_lapsed_lock_waits_for_the_lock_sweep(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    """The lock sweep records the lapsed lock (lock_expired, the order expired) first; the expiry comes after."""
    await deliver_coupon(runner, valid_until=UNTIL)
    await ok(lock(runner, now=NOW))
    at = NOW + LOCK_SECONDS + 100  # the lock lapsed, and the lock sweep has not run
    before = await snapshot(redis_client)

    assert await sweep_expired(runner, now=at) == ["ok", 0, 1]

    after = await snapshot(redis_client)
    assert changed(before, after) == {WALLET.expiring}
    assert scores(after, WALLET.expiring) == [(COUPON, float(at + 1))]  # the next pass
    assert coupon_in(after) == coupon_in(before)
    assert await unchanged(redis_client, sweep_expired(runner, now=at)) == ["ok", 0, 0]

    assert await sweep(runner, now=at + 1) == ["ok", 1, 1]  # lock_expired: version 3, available
    locks_swept = await snapshot(redis_client)

    assert await sweep_expired(runner, now=at + 1) == ["ok", 1, 1]

    final = await snapshot(redis_client)
    assert changed(locks_swept, final) == SWEPT
    expired = record("expired", 4, valid_until=UNTIL)
    assert coupon_in(final) == expired
    assert scores(final, WALLET.finished) == [(COUPON, float(at + 1))]
    assert [entry["type"] for entry in appended(before, final)] == ["lock_expired", "expired"]
    assert appended(locks_swept, final) == [expired_event(4, at + 1, expired)]


async def test_a_redeemed_coupon_is_final_at_its_validitys_end_without_an_event(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await deliver_coupon(runner, valid_until=UNTIL)
    await ok(lock(runner, now=NOW))
    await ok(redeem(runner, now=NOW + 10))
    before = await snapshot(redis_client)

    assert await sweep_expired(runner, now=UNTIL + 5) == ["ok", 0, 1]

    after = await snapshot(redis_client)
    assert changed(before, after) == {WALLET.expiring, WALLET.finished}
    assert coupon_in(after) == record("redeemed", 3, valid_until=UNTIL, order=ORDER, discount=DISCOUNT)
    assert scores(after, WALLET.expiring) is None
    assert scores(after, WALLET.finished) == [(COUPON, float(UNTIL))]


async def test_a_coupon_redeemed_under_a_lock_past_its_validity_is_final_when_found(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await deliver_coupon(runner, valid_until=UNTIL)
    await ok(lock(runner, now=NOW))
    assert await sweep_expired(runner, now=UNTIL) == ["ok", 0, 1]  # locked: back at its deadline
    await ok(redeem(runner, now=UNTIL + 20))  # the lock honoured past the validity
    before = await snapshot(redis_client)

    assert await sweep_expired(runner, now=NOW + LOCK_SECONDS) == ["ok", 0, 1]

    after = await snapshot(redis_client)
    assert changed(before, after) == {WALLET.expiring, WALLET.finished}
    assert scores(after, WALLET.finished) == [(COUPON, float(NOW + LOCK_SECONDS))]


async def test_an_expired_coupon_is_final_without_a_second_event(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    """A record already expired (as restore writes one the ledger holds expired) moves to finished only."""
    await deliver_coupon(runner, valid_until=UNTIL)
    await redis_client.hset(WALLET.coupons, COUPON, json.dumps(record("expired", 2, valid_until=UNTIL)))
    before = await snapshot(redis_client)

    assert await sweep_expired(runner, now=UNTIL + 1) == ["ok", 0, 1]

    after = await snapshot(redis_client)
    assert changed(before, after) == {WALLET.expiring, WALLET.finished}
    assert scores(after, WALLET.finished) == [(COUPON, float(UNTIL))]


async def test_an_entry_without_its_coupon_is_dropped(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await deliver_coupon(runner, valid_until=UNTIL)
    await redis_client.zadd(WALLET.expiring, {"c9.1": NOW - 5})
    before = await snapshot(redis_client)

    assert await sweep_expired(runner, now=NOW) == ["ok", 0, 1]

    after = await snapshot(redis_client)
    assert changed(before, after) == {WALLET.expiring}
    assert scores(after, WALLET.expiring) == [(COUPON, float(UNTIL))]


async def test_an_entry_due_before_its_coupons_validity_ends_goes_back_to_it(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await deliver_coupon(runner, valid_until=UNTIL)
    await redis_client.zadd(WALLET.expiring, {COUPON: NOW - 5})  # never written so by the scripts
    before = await snapshot(redis_client)

    assert await sweep_expired(runner, now=NOW) == ["ok", 0, 1]

    after = await snapshot(redis_client)
    assert changed(before, after) == {WALLET.expiring}
    assert scores(after, WALLET.expiring) == [(COUPON, float(UNTIL))]
    assert coupon_in(after)["status"] == "available"


async def test_the_sweep_honours_its_limit(runner: ScriptRunner, redis_client: RedisClient) -> None:
    for n, coupon_id in enumerate((COUPON, COUPON_2, COUPON_3)):
        await deliver_coupon(runner, coupon_id, valid_until=UNTIL + n)  # seq 1..3
    at = UNTIL + 10
    start = await snapshot(redis_client)

    assert await sweep_expired(runner, now=at, limit=2) == ["ok", 2, 2]

    middle = await snapshot(redis_client)
    assert [entry["coupon"] for entry in appended(start, middle)] == [COUPON, COUPON_2]  # the earliest first
    assert scores(middle, WALLET.expiring) == [(COUPON_3, float(UNTIL + 2))]
    assert coupon_in(middle, COUPON_3) == coupon_in(start, COUPON_3)

    assert await sweep_expired(runner, now=at, limit=2) == ["ok", 1, 1]

    after = await snapshot(redis_client)
    third = record("expired", 2, coupon_id=COUPON_3, valid_until=UNTIL + 2)
    assert coupon_in(after, COUPON_3) == third
    assert appended(middle, after) == [expired_event(6, at, third, coupon_id=COUPON_3)]
    assert scores(after, WALLET.expiring) is None
    assert scores(after, WALLET.finished) == [
        (COUPON, float(UNTIL)),
        (COUPON_2, float(UNTIL + 1)),
        (COUPON_3, float(UNTIL + 2)),
    ]
    assert await unchanged(redis_client, sweep_expired(runner, now=at)) == ["ok", 0, 0]


async def test_a_repeated_expiry_is_the_same_event(runner: ScriptRunner, redis_client: RedisClient) -> None:
    """A Redis rolled back to before the expiry (the coupon available, its entry back) records it again with the
    same id and version: the ledger sees the event it may already hold, not a second one."""
    await deliver_coupon(runner, valid_until=UNTIL)
    assert await sweep_expired(runner, now=UNTIL + 1) == ["ok", 1, 1]
    first = appended({}, await snapshot(redis_client))[-1]
    await redis_client.hset(WALLET.coupons, COUPON, json.dumps(record("available", 1, valid_until=UNTIL)))
    await redis_client.zrem(WALLET.finished, COUPON)
    await redis_client.zadd(WALLET.expiring, {COUPON: UNTIL})
    await redis_client.set(WALLET.seq, 1)

    assert await sweep_expired(runner, now=UNTIL + 9) == ["ok", 1, 1]

    again = appended({}, await snapshot(redis_client))[-1]
    assert again == {**first, "at": str(UNTIL + 9)}
    assert (again["id"], again["version"]) == (f"expired:{COUPON}", "2")
