"""The checkout scripts (lock, redeem, release, refund, sweep_locks, order_view) against real Redis: each reply,
and every key each one touches (coupon record, order record, the locks index, the counters, seq and the event
with all its fields); refusals and replays write nothing at all."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from itertools import count
from typing import Any

import pytest

from gateway.events import SCHEMA_VERSION
from gateway.keys import KeySpace, order_field
from gateway.scripts.calls.checkout import CheckoutKeys, RefundKeys
from gateway.scripts.runner import RedisClient, ScriptRunner
from tests.lua.support import DAY, NOW, Snapshot, changed, deliver, snapshot

KEYSPACE = KeySpace(8, 4)
USER = "u1"
WALLET = KEYSPACE.wallet(USER)
OTHER_USER = next(
    f"u{n}" for n in count(2) if KEYSPACE.wallet_bucket(f"u{n}") == KEYSPACE.wallet_bucket(USER)
)  # another user whose coupons and orders live in the same bucket
ACTIVITY, TEMPLATE = "act1", "t1"
COUPON, COUPON_2, COUPON_3 = "c1.1", "c2.1", "c3.1"
ORDER, ORDER_2, ORDER_3 = "o1", "o2", "o3"
VALID_FROM, VALID_UNTIL = NOW - DAY, NOW + 7 * DAY
LOCK_SECONDS = 600
DISCOUNT = 500
SPLIT = '[{"sku":"sku-1","amount":300},{"sku":"sku-2","amount":200}]'
FIELD = order_field(USER, ORDER)
EVERY_KEY = {
    WALLET.coupons,
    WALLET.orders,
    WALLET.locks,
    WALLET.counters,
    WALLET.seq,
    WALLET.events,
    WALLET.finished_orders,
}


# --- putting coupons in the wallet, calling the scripts -------------------------------------------------------


async def deliver_coupon(
    runner: ScriptRunner,
    coupon_id: str = COUPON,
    *,
    user: str = USER,
    valid_from: int = VALID_FROM,
    valid_until: int = VALID_UNTIL,
) -> None:
    """One coupon into the wallet bucket by the deliver script (its claim id is the coupon id's prefix)."""
    claim_id = coupon_id.partition(".")[0]
    answer = json.dumps(
        {
            "claim_id": claim_id,
            "coupons": [
                {
                    "coupon_id": coupon_id,
                    "template_id": TEMPLATE,
                    "valid_from": valid_from,
                    "valid_until": valid_until,
                }
            ],
        }
    )
    assert await deliver(runner, WALLET, user, ACTIVITY, answer, now=NOW - DAY) == ["ok"]


async def checkout(
    runner: ScriptRunner,
    script: str,
    *args: str | int,
    now: int,
    event_id: str,
    user: str,
    keys: list[str] | None = None,
) -> list[Any]:
    """A checkout script's call as CheckoutService makes it: the bucket's checkout KEYS, now, event id, user."""
    return await runner.run(script, keys or CheckoutKeys.of(WALLET), [now, event_id, user, *args])


async def lock(
    runner: ScriptRunner,
    order: str = ORDER,
    coupon_id: str = COUPON,
    *,
    discount: str = str(DISCOUNT),
    now: int = NOW,
    event_id: str = "e-lock",
    user: str = USER,
) -> list[Any]:
    args = (order, coupon_id, discount, SPLIT, LOCK_SECONDS)
    return await checkout(runner, "lock", *args, now=now, event_id=event_id, user=user)


async def redeem(
    runner: ScriptRunner, order: str = ORDER, *, now: int = NOW, event_id: str = "e-redeem", user: str = USER
) -> list[Any]:
    return await checkout(runner, "redeem", order, now=now, event_id=event_id, user=user)


async def release(
    runner: ScriptRunner, order: str = ORDER, *, now: int = NOW, event_id: str = "e-release", user: str = USER
) -> list[Any]:
    return await checkout(runner, "release", order, now=now, event_id=event_id, user=user)


async def refund(
    runner: ScriptRunner, order: str = ORDER, *, now: int = NOW, event_id: str = "e-refund", user: str = USER
) -> list[Any]:
    keys = RefundKeys.of(WALLET)  # refund takes no locks key
    return await checkout(runner, "refund", order, now=now, event_id=event_id, user=user, keys=keys)


async def sweep(runner: ScriptRunner, *, now: int, event_id: str = "e-sweep", limit: int = 100) -> list[Any]:
    return await runner.run("sweep_locks", CheckoutKeys.of(WALLET), [now, event_id, limit])


async def order_view(runner: ScriptRunner, order: str = ORDER, user: str = USER) -> list[Any]:
    return await runner.run("order_view", [WALLET.coupons, WALLET.orders], [user, order])


async def ok(call: Awaitable[list[Any]]) -> dict[str, Any]:
    """Run a call that must succeed; its answer, decoded."""
    reply = await call
    assert reply[0] == "ok", reply
    answer: dict[str, Any] = json.loads(reply[1])
    return answer


async def unchanged(client: RedisClient, call: Awaitable[list[Any]]) -> list[Any]:
    """Run a call, assert it wrote nothing anywhere in Redis, and return its reply."""
    before = await snapshot(client)
    reply = await call
    assert await snapshot(client) == before
    return reply


# --- what the keys should hold ---------------------------------------------------------------------------------


def record(
    status: str = "available",
    version: int = 1,
    *,
    coupon_id: str = COUPON,
    user: str = USER,
    valid_from: int = VALID_FROM,
    valid_until: int = VALID_UNTIL,
    **extra: Any,
) -> dict[str, Any]:
    """A coupon record as deliver writes it, plus what checkout adds (order, locked_until, discount)."""
    return {
        "user": user,
        "activity": ACTIVITY,
        "template": TEMPLATE,
        "claim": coupon_id.partition(".")[0],
        "valid_from": valid_from,
        "valid_until": valid_until,
        "status": status,
        "version": version,
        **extra,
    }


def order_record(status: str, version: int, *, coupon_id: str = COUPON, **extra: Any) -> dict[str, Any]:
    return {
        "coupon": coupon_id,
        "status": status,
        "discount": DISCOUNT,
        "split": SPLIT,
        "version": version,
        **extra,
    }


def event(
    kind: str,
    event_id: str,
    seq: int,
    at: int,
    coupon: dict[str, Any],
    *,
    coupon_id: str = COUPON,
    status: str,
    version: int | str,
    order: str = ORDER,
    order_status: str,
    order_version: int | str,
    discount: int | str = DISCOUNT,
    split: str = SPLIT,
    locked_until: int | str = "",
    returned: str = "",
) -> dict[str, str]:
    """A checkout script's ledger entry, every field: the coupon's identity from its record, then the rest."""
    entry = {
        "type": kind,
        "v": str(SCHEMA_VERSION),
        "id": event_id,
        "seq": seq,
        "at": at,
        "user": coupon["user"],
        "activity": coupon["activity"],
        "coupon": coupon_id,
        "template": coupon["template"],
        "claim": coupon["claim"],
        "valid_from": coupon["valid_from"],
        "valid_until": coupon["valid_until"],
        "status": status,
        "version": version,
        "order": order,
        "order_status": order_status,
        "order_version": order_version,
        "discount": discount,
        "split": split,
        "locked_until": locked_until,
        "returned": returned,
    }
    return {name: str(value) for name, value in entry.items()}


def coupon_in(snap: Snapshot, coupon_id: str = COUPON) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(snap[WALLET.coupons][1][coupon_id])
    return found


def order_in(snap: Snapshot, order: str = ORDER, user: str = USER) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(snap[WALLET.orders][1][order_field(user, order)])
    return found


def value_of(snap: Snapshot, key: str) -> Any:
    """A key's value in a snapshot; None when the key does not exist (an emptied zset is deleted)."""
    return snap[key][1] if key in snap else None


def appended(before: Snapshot, after: Snapshot) -> list[dict[str, str]]:
    """The entries added to the bucket's stream between two snapshots (the older ones untouched)."""
    old = before[WALLET.events][1]["entries"] if WALLET.events in before else []
    new = after[WALLET.events][1]["entries"]
    assert new[: len(old)] == old
    return [fields for _, fields in new[len(old) :]]


def lock_answer(order: str = ORDER, coupon_id: str = COUPON, *, until: int) -> dict[str, Any]:
    return {
        "order_id": order,
        "coupon_id": coupon_id,
        "discount": DISCOUNT,
        "split": json.loads(SPLIT),
        "locked_until": until,
    }


Setup = Callable[[ScriptRunner], Awaitable[None]]


# --- lock ------------------------------------------------------------------------------------------------------


async def test_lock_locks_the_coupon_to_the_order(runner: ScriptRunner, redis_client: RedisClient) -> None:
    await deliver_coupon(runner)
    before = await snapshot(redis_client)

    answer = await ok(lock(runner, now=NOW + 5, event_id="e-1"))

    until = NOW + 5 + LOCK_SECONDS
    assert answer == lock_answer(until=until)
    after = await snapshot(redis_client)
    assert changed(before, after) == EVERY_KEY - {WALLET.finished_orders}  # a live order is not finished
    locked = record("locked", 2, order=ORDER, locked_until=until, discount=DISCOUNT)
    assert coupon_in(after) == locked
    assert order_in(after) == order_record("locked", 1, locked_until=until)
    assert value_of(after, WALLET.locks) == [(COUPON, float(until))]
    assert value_of(after, WALLET.counters) == {f"{ACTIVITY}|locked": "1"}
    assert value_of(after, WALLET.seq) == "2"  # 1 was the delivery
    assert appended(before, after) == [
        event(
            "locked",
            "e-1",
            2,
            NOW + 5,
            locked,
            status="locked",
            order_status="locked",
            version=2,
            order_version=1,
            locked_until=until,
        )
    ]


async def test_the_same_lock_again_replays_its_answer(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await deliver_coupon(runner)
    first = await lock(runner)

    again = await unchanged(redis_client, lock(runner, now=NOW + 30, event_id="e-again"))

    assert again == ["replay", first[1]]


@pytest.mark.parametrize(
    ("coupon_id", "owner"),
    [("c9.1", None), (COUPON, OTHER_USER)],
    ids=["no-such-coupon", "another-users-coupon"],
)
async def test_lock_of_a_coupon_not_in_the_wallet_is_not_found(
    runner: ScriptRunner, redis_client: RedisClient, coupon_id: str, owner: str | None
) -> None:
    await deliver_coupon(runner, user=owner or USER)

    assert await unchanged(redis_client, lock(runner, ORDER, coupon_id)) == ["not_found"]


async def locked_by_another_order(runner: ScriptRunner) -> None:
    await deliver_coupon(runner)
    await ok(lock(runner, ORDER_2, now=NOW - 60))  # deadline NOW + 540: live


async def redeemed_by_another_order(runner: ScriptRunner) -> None:
    await deliver_coupon(runner)
    await ok(lock(runner, ORDER_2, now=NOW - 60))
    await ok(redeem(runner, ORDER_2, now=NOW - 30))


async def past_its_validity(runner: ScriptRunner) -> None:
    await deliver_coupon(runner, valid_until=NOW)  # valid until (exclusive) now


async def not_yet_valid(runner: ScriptRunner) -> None:
    await deliver_coupon(runner, valid_from=NOW + 1)


async def order_holds_another_live_lock(runner: ScriptRunner) -> None:
    await deliver_coupon(runner)
    await deliver_coupon(runner, COUPON_2)
    await ok(lock(runner, ORDER, COUPON_2, now=NOW - 60))


async def order_is_redeemed(runner: ScriptRunner) -> None:
    await deliver_coupon(runner)
    await deliver_coupon(runner, COUPON_2)
    await ok(lock(runner, ORDER, COUPON_2, now=NOW - 60))
    await ok(redeem(runner, ORDER, now=NOW - 30))


async def order_redeemed_this_coupon(runner: ScriptRunner) -> None:
    await deliver_coupon(runner)
    await ok(lock(runner, ORDER, now=NOW - 60))
    await ok(redeem(runner, ORDER, now=NOW - 30))


@pytest.mark.parametrize(
    "setup",
    [
        locked_by_another_order,
        redeemed_by_another_order,
        past_its_validity,
        not_yet_valid,
        order_holds_another_live_lock,
        order_is_redeemed,
        order_redeemed_this_coupon,
    ],
)
async def test_lock_is_refused_when_the_coupon_is_unavailable(
    runner: ScriptRunner, redis_client: RedisClient, setup: Setup
) -> None:
    await setup(runner)

    assert await unchanged(redis_client, lock(runner, ORDER, COUPON)) == ["coupon_unavailable"]


async def test_lock_when_the_coupon_does_not_apply_is_not_applicable(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await deliver_coupon(runner)

    assert await unchanged(redis_client, lock(runner, discount="")) == ["not_applicable"]


async def test_another_order_takes_over_a_lapsed_lock(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await deliver_coupon(runner)
    await ok(lock(runner, ORDER, now=NOW))
    before = await snapshot(redis_client)
    at = NOW + LOCK_SECONDS  # exactly the first lock's deadline: lapsed

    answer = await ok(lock(runner, ORDER_2, now=at, event_id="e-2"))

    until = at + LOCK_SECONDS
    assert answer == lock_answer(ORDER_2, until=until)
    after = await snapshot(redis_client)
    assert changed(before, after) == EVERY_KEY - {WALLET.counters, WALLET.finished_orders}  # still one locked
    locked = record("locked", 3, order=ORDER_2, locked_until=until, discount=DISCOUNT)
    assert coupon_in(after) == locked
    assert order_in(after, ORDER_2) == order_record("locked", 1, locked_until=until)
    assert order_in(after, ORDER) == order_in(before, ORDER)  # the first order's record is left as it was
    assert value_of(after, WALLET.locks) == [(COUPON, float(until))]
    assert value_of(after, WALLET.counters) == {f"{ACTIVITY}|locked": "1"}
    assert value_of(after, WALLET.seq) == "3"
    assert appended(before, after) == [
        event(
            "locked",
            "e-2",
            3,
            at,
            locked,
            order=ORDER_2,
            status="locked",
            order_status="locked",
            version=3,
            order_version=1,
            locked_until=until,
        )
    ]


async def test_the_same_order_locks_again_after_its_own_lock_lapsed(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await deliver_coupon(runner)
    await ok(lock(runner, ORDER, now=NOW))
    before = await snapshot(redis_client)
    at = NOW + LOCK_SECONDS + 100

    first_answer = await ok(lock(runner, ORDER, now=at, event_id="e-2"))

    until = at + LOCK_SECONDS
    assert first_answer == lock_answer(until=until)
    after = await snapshot(redis_client)
    assert changed(before, after) == EVERY_KEY - {WALLET.counters, WALLET.finished_orders}
    locked = record("locked", 3, order=ORDER, locked_until=until, discount=DISCOUNT)
    assert coupon_in(after) == locked
    assert order_in(after) == order_record("locked", 2, locked_until=until)
    assert value_of(after, WALLET.locks) == [(COUPON, float(until))]
    assert value_of(after, WALLET.counters) == {f"{ACTIVITY}|locked": "1"}
    assert appended(before, after) == [
        event(
            "locked",
            "e-2",
            3,
            at,
            locked,
            status="locked",
            order_status="locked",
            version=3,
            order_version=2,
            locked_until=until,
        )
    ]


# --- redeem ----------------------------------------------------------------------------------------------------

REDEEMED_ANSWER = {"order_id": ORDER, "coupon_id": COUPON, "status": "redeemed"}
REDEEMED_COUNTERS = {
    f"{ACTIVITY}|locked": "0",
    f"{ACTIVITY}|redeemed": "1",
    f"{ACTIVITY}|redeemed_value": str(DISCOUNT),
}


@pytest.mark.parametrize(
    "at", [NOW + 60, NOW + LOCK_SECONDS + 300], ids=["within-the-lock", "lapsed-but-free"]
)
async def test_redeem_redeems_the_coupon(runner: ScriptRunner, redis_client: RedisClient, at: int) -> None:
    await deliver_coupon(runner)
    await ok(lock(runner, now=NOW))
    before = await snapshot(redis_client)

    assert await ok(redeem(runner, now=at, event_id="e-3")) == REDEEMED_ANSWER

    after = await snapshot(redis_client)
    assert changed(before, after) == EVERY_KEY
    redeemed = record("redeemed", 3, order=ORDER, discount=DISCOUNT)
    assert coupon_in(after) == redeemed
    assert order_in(after) == order_record("redeemed", 2)
    # a refund may still return the coupon until its validity ends: the order finishes then
    assert value_of(after, WALLET.finished_orders) == [(FIELD, float(VALID_UNTIL))]
    assert value_of(after, WALLET.locks) is None  # its entry removed, the index empty
    assert value_of(after, WALLET.counters) == REDEEMED_COUNTERS
    assert value_of(after, WALLET.seq) == "3"
    assert appended(before, after) == [
        event(
            "redeemed",
            "e-3",
            3,
            at,
            redeemed,
            status="redeemed",
            order_status="redeemed",
            version=3,
            order_version=2,
        )
    ]


async def test_redeem_after_the_sweeper_expired_the_lock_does_not_count_it_unlocked_twice(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await deliver_coupon(runner)
    await ok(lock(runner, now=NOW))
    assert await sweep(runner, now=NOW + LOCK_SECONDS) == ["ok", 1, 1]
    before = await snapshot(redis_client)
    at = NOW + LOCK_SECONDS + 60

    assert await ok(redeem(runner, now=at, event_id="e-4")) == REDEEMED_ANSWER

    after = await snapshot(redis_client)
    assert changed(before, after) == EVERY_KEY - {WALLET.locks}  # the sweeper emptied the index
    redeemed = record("redeemed", 4, order=ORDER, discount=DISCOUNT)
    assert coupon_in(after) == redeemed
    assert order_in(after) == order_record("redeemed", 3)
    assert value_of(after, WALLET.counters) == REDEEMED_COUNTERS
    assert appended(before, after) == [
        event(
            "redeemed",
            "e-4",
            4,
            at,
            redeemed,
            status="redeemed",
            order_status="redeemed",
            version=4,
            order_version=3,
        )
    ]


async def test_redeem_again_replays_its_answer(runner: ScriptRunner, redis_client: RedisClient) -> None:
    await deliver_coupon(runner)
    await ok(lock(runner))
    first = await redeem(runner, now=NOW + 60)

    again = await unchanged(redis_client, redeem(runner, now=NOW + 120, event_id="e-again"))

    assert again == ["replay", first[1]]


@pytest.mark.parametrize(
    ("order", "user"), [("o9", USER), (ORDER, OTHER_USER)], ids=["no-order", "other-user"]
)
async def test_redeem_of_an_order_that_locked_nothing_is_not_found(
    runner: ScriptRunner, redis_client: RedisClient, order: str, user: str
) -> None:
    await deliver_coupon(runner)
    await ok(lock(runner))

    assert await unchanged(redis_client, redeem(runner, order, user=user)) == ["not_found"]


async def test_redeem_after_the_deadline_when_another_order_took_the_coupon(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await deliver_coupon(runner)
    await ok(lock(runner, ORDER, now=NOW))
    await ok(lock(runner, ORDER_2, now=NOW + LOCK_SECONDS))

    reply = await unchanged(redis_client, redeem(runner, ORDER, now=NOW + LOCK_SECONDS + 10))

    assert reply == ["coupon_unavailable"]


async def test_redeem_after_the_deadline_when_the_coupon_is_no_longer_valid(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await deliver_coupon(runner, valid_until=NOW + 300)  # the lock outlives the coupon's validity
    await ok(lock(runner, now=NOW))

    reply = await unchanged(redis_client, redeem(runner, now=NOW + LOCK_SECONDS + 10))

    assert reply == ["coupon_unavailable"]


async def test_redeem_after_a_refund(runner: ScriptRunner, redis_client: RedisClient) -> None:
    await deliver_coupon(runner)
    await ok(lock(runner))
    await ok(redeem(runner, now=NOW + 60))
    await ok(refund(runner, now=NOW + 120))

    assert await unchanged(redis_client, redeem(runner, now=NOW + 180)) == ["coupon_unavailable"]


# --- release ---------------------------------------------------------------------------------------------------


def release_answer(status: str) -> dict[str, Any]:
    return {"order_id": ORDER, "coupon_id": COUPON, "status": status}


@pytest.mark.parametrize(
    "at", [NOW + 60, NOW + LOCK_SECONDS + 300], ids=["within-the-lock", "lapsed-not-swept"]
)
async def test_release_makes_the_coupon_available(
    runner: ScriptRunner, redis_client: RedisClient, at: int
) -> None:
    await deliver_coupon(runner)
    await ok(lock(runner, now=NOW))
    before = await snapshot(redis_client)

    assert await ok(release(runner, now=at, event_id="e-3")) == release_answer("available")

    after = await snapshot(redis_client)
    assert changed(before, after) == EVERY_KEY
    available = record("available", 3)  # order, locked_until and discount gone
    assert coupon_in(after) == available
    assert order_in(after) == order_record("released", 2)
    assert value_of(after, WALLET.finished_orders) == [(FIELD, float(at))]
    assert value_of(after, WALLET.locks) is None
    assert value_of(after, WALLET.counters) == {f"{ACTIVITY}|locked": "0"}
    assert value_of(after, WALLET.seq) == "3"
    assert appended(before, after) == [
        event(
            "released",
            "e-3",
            3,
            at,
            available,
            status="available",
            version=3,
            order_status="released",
            order_version=2,
        )
    ]


async def test_release_again_answers_available_and_writes_nothing(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await deliver_coupon(runner)
    await ok(lock(runner))
    await ok(release(runner, now=NOW + 60))

    reply = await unchanged(redis_client, release(runner, now=NOW + 120, event_id="e-again"))

    assert reply[0] == "replay" and json.loads(reply[1]) == release_answer("available")


async def test_release_after_another_order_took_the_lapsed_lock_answers_locked(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await deliver_coupon(runner)
    await ok(lock(runner, ORDER, now=NOW))
    await ok(lock(runner, ORDER_2, now=NOW + LOCK_SECONDS))

    reply = await unchanged(redis_client, release(runner, ORDER, now=NOW + LOCK_SECONDS + 10))

    assert reply[0] == "replay" and json.loads(reply[1]) == release_answer("locked")


@pytest.mark.parametrize(
    ("valid_until", "status"),
    [(VALID_UNTIL, "available"), (NOW + LOCK_SECONDS + 10, "expired")],
    ids=["still-valid", "past-validity"],
)
async def test_release_after_the_sweeper_expired_the_lock_answers_the_coupons_state(
    runner: ScriptRunner, redis_client: RedisClient, valid_until: int, status: str
) -> None:
    await deliver_coupon(runner, valid_until=valid_until)
    await ok(lock(runner, now=NOW))
    assert await sweep(runner, now=NOW + LOCK_SECONDS) == ["ok", 1, 1]

    reply = await unchanged(redis_client, release(runner, now=NOW + LOCK_SECONDS + 10))

    assert reply[0] == "replay" and json.loads(reply[1]) == release_answer(status)
    assert json.loads((await order_view(runner))[1])["status"] == "expired"


@pytest.mark.parametrize("refunded", [False, True], ids=["redeemed", "refunded"])
async def test_release_of_a_paid_order_is_refused(
    runner: ScriptRunner, redis_client: RedisClient, refunded: bool
) -> None:
    await deliver_coupon(runner)
    await ok(lock(runner))
    await ok(redeem(runner, now=NOW + 60))
    if refunded:
        await ok(refund(runner, now=NOW + 120))

    assert await unchanged(redis_client, release(runner, now=NOW + 180)) == ["coupon_unavailable"]


async def test_release_of_an_order_that_locked_nothing_is_not_found(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await deliver_coupon(runner)
    await ok(lock(runner))

    assert await unchanged(redis_client, release(runner, ORDER_2)) == ["not_found"]


# --- refund ----------------------------------------------------------------------------------------------------


def refund_answer(returned: bool) -> dict[str, Any]:
    status = "available" if returned else "redeemed"
    return {"order_id": ORDER, "coupon_id": COUPON, "status": status, "returned": returned}


async def redeemed_coupon(runner: ScriptRunner, *, valid_until: int = VALID_UNTIL) -> None:
    """The coupon locked at NOW and redeemed at NOW + 60 by ORDER (seq 3 after it)."""
    await deliver_coupon(runner, valid_until=valid_until)
    await ok(lock(runner, now=NOW))
    await ok(redeem(runner, now=NOW + 60))


async def test_refund_within_validity_returns_the_coupon(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await redeemed_coupon(runner)
    before = await snapshot(redis_client)
    at = NOW + 120

    assert await ok(refund(runner, now=at, event_id="e-4")) == refund_answer(True)

    after = await snapshot(redis_client)
    assert changed(before, after) == EVERY_KEY - {WALLET.locks}  # no lock index entry (it never holds one)
    available = record("available", 4)
    assert coupon_in(after) == available
    assert order_in(after) == order_record("refunded", 3, returned=True)
    assert value_of(after, WALLET.finished_orders) == [(FIELD, float(at))]  # refunded: finished now
    assert value_of(after, WALLET.locks) is None
    assert value_of(after, WALLET.counters) == {
        f"{ACTIVITY}|locked": "0",
        f"{ACTIVITY}|redeemed": "0",
        f"{ACTIVITY}|redeemed_value": "0",
    }
    assert value_of(after, WALLET.seq) == "4"
    assert appended(before, after) == [
        event(
            "refunded",
            "e-4",
            4,
            at,
            available,
            status="available",
            version=4,
            order_status="refunded",
            order_version=3,
            returned="1",
        )
    ]


async def test_refund_past_validity_leaves_the_coupon_redeemed(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await redeemed_coupon(runner, valid_until=NOW + 1000)
    before = await snapshot(redis_client)
    at = NOW + 1000  # validity ends (exclusive) now

    assert await ok(refund(runner, now=at, event_id="e-4")) == refund_answer(False)

    after = await snapshot(redis_client)
    assert changed(before, after) == {WALLET.orders, WALLET.seq, WALLET.events}
    redeemed = record("redeemed", 3, valid_until=NOW + 1000, order=ORDER, discount=DISCOUNT)
    assert coupon_in(after) == redeemed
    assert order_in(after) == order_record("refunded", 3, returned=False)
    assert value_of(after, WALLET.counters) == REDEEMED_COUNTERS
    assert value_of(after, WALLET.seq) == "4"
    assert appended(before, after) == [
        event(
            "refunded",
            "e-4",
            4,
            at,
            redeemed,
            status="redeemed",
            version="",
            order_status="refunded",
            order_version=3,
            returned="0",
        )
    ]


@pytest.mark.parametrize("returned", [True, False], ids=["returned", "not-returned"])
async def test_refund_again_answers_as_the_first(
    runner: ScriptRunner, redis_client: RedisClient, returned: bool
) -> None:
    await redeemed_coupon(runner, valid_until=NOW + 1000)
    at = NOW + 120 if returned else NOW + 1000
    first = await refund(runner, now=at)
    assert json.loads(first[1]) == refund_answer(returned)

    again = await unchanged(redis_client, refund(runner, now=at + 60, event_id="e-again"))

    assert again == ["replay", first[1]]


@pytest.mark.parametrize("released", [False, True], ids=["locked", "released"])
async def test_refund_of_an_unpaid_order_is_refused(
    runner: ScriptRunner, redis_client: RedisClient, released: bool
) -> None:
    await deliver_coupon(runner)
    await ok(lock(runner))
    if released:
        await ok(release(runner, now=NOW + 60))

    assert await unchanged(redis_client, refund(runner, now=NOW + 120)) == ["coupon_unavailable"]


async def test_refund_of_an_order_that_locked_nothing_is_not_found(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await redeemed_coupon(runner)

    assert await unchanged(redis_client, refund(runner, ORDER_2)) == ["not_found"]


# --- sweep_locks -----------------------------------------------------------------------------------------------


async def three_locks(runner: ScriptRunner) -> None:
    """COUPON, COUPON_2, COUPON_3 locked by ORDER, ORDER_2, ORDER_3 with deadlines NOW + 600, + 700, + 800."""
    for n, (coupon_id, order) in enumerate(
        zip((COUPON, COUPON_2, COUPON_3), (ORDER, ORDER_2, ORDER_3), strict=True)
    ):
        await deliver_coupon(runner, coupon_id)
        await ok(lock(runner, order, coupon_id, now=NOW + 100 * n))


async def test_sweep_expires_only_lapsed_locks(runner: ScriptRunner, redis_client: RedisClient) -> None:
    await three_locks(runner)  # seq 6
    before = await snapshot(redis_client)
    at = NOW + 700  # COUPON_2's deadline exactly: lapsed; COUPON_3's still ahead

    assert await sweep(runner, now=at, event_id="e-s") == ["ok", 2, 2]

    after = await snapshot(redis_client)
    assert changed(before, after) == EVERY_KEY
    first, second = record("available", 3), record("available", 3, coupon_id=COUPON_2)
    assert coupon_in(after, COUPON) == first
    assert coupon_in(after, COUPON_2) == second
    assert coupon_in(after, COUPON_3) == coupon_in(before, COUPON_3)
    assert order_in(after, ORDER) == order_record("expired", 2)
    assert order_in(after, ORDER_2) == order_record("expired", 2, coupon_id=COUPON_2)
    assert order_in(after, ORDER_3) == order_in(before, ORDER_3)
    assert value_of(after, WALLET.finished_orders) == sorted(
        [(FIELD, float(at)), (order_field(USER, ORDER_2), float(at))]
    )
    assert value_of(after, WALLET.locks) == [(COUPON_3, float(NOW + 200 + LOCK_SECONDS))]
    assert value_of(after, WALLET.counters) == {f"{ACTIVITY}|locked": "1"}
    assert value_of(after, WALLET.seq) == "8"
    assert appended(before, after) == [
        event(
            "lock_expired",
            "e-s.1",
            7,
            at,
            first,
            status="available",
            version=3,
            order_status="expired",
            order_version=2,
        ),
        event(
            "lock_expired",
            "e-s.2",
            8,
            at,
            second,
            coupon_id=COUPON_2,
            order=ORDER_2,
            status="available",
            version=3,
            order_status="expired",
            order_version=2,
        ),
    ]


async def test_sweep_with_nothing_due_writes_nothing(runner: ScriptRunner, redis_client: RedisClient) -> None:
    await three_locks(runner)

    assert await unchanged(redis_client, sweep(runner, now=NOW + LOCK_SECONDS - 1)) == ["ok", 0, 0]


async def test_sweep_drops_index_entries_of_coupons_no_longer_locked(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await deliver_coupon(runner)
    await deliver_coupon(runner, COUPON_2)
    await ok(lock(runner, ORDER_2, COUPON_2, now=NOW))
    await ok(redeem(runner, ORDER_2, now=NOW + 10))  # COUPON_2 redeemed; its index entry gone
    await redis_client.zadd(WALLET.locks, {COUPON: NOW - 10, COUPON_2: NOW - 5, "c9.1": NOW - 1})  # stale
    before = await snapshot(redis_client)

    assert await sweep(runner, now=NOW + 20) == ["ok", 0, 3]

    after = await snapshot(redis_client)
    assert changed(before, after) == {WALLET.locks}
    assert value_of(after, WALLET.locks) is None


async def test_sweep_expires_a_lock_its_order_moved_on_from(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    """ORDER's lock on COUPON lapsed and ORDER then locked COUPON_2: COUPON expires, ORDER's record stays."""
    await deliver_coupon(runner)
    await deliver_coupon(runner, COUPON_2)
    await ok(lock(runner, ORDER, COUPON, now=NOW))
    await ok(lock(runner, ORDER, COUPON_2, now=NOW + LOCK_SECONDS))
    before = await snapshot(redis_client)
    at = NOW + LOCK_SECONDS + 10

    assert await sweep(runner, now=at, event_id="e-s") == ["ok", 1, 1]

    after = await snapshot(redis_client)
    assert changed(before, after) == EVERY_KEY - {WALLET.orders, WALLET.finished_orders}  # ORDER moved on
    available = record("available", 3)
    assert coupon_in(after) == available
    assert value_of(after, WALLET.locks) == [(COUPON_2, float(NOW + 2 * LOCK_SECONDS))]
    assert value_of(after, WALLET.counters) == {f"{ACTIVITY}|locked": "1"}
    assert appended(before, after) == [
        event(
            "lock_expired",
            "e-s.1",
            5,
            at,
            available,
            status="available",
            version=3,
            order_status="",
            order_version="",
            discount="",
            split="",
        )
    ]


async def test_sweep_honours_its_limit(runner: ScriptRunner, redis_client: RedisClient) -> None:
    await three_locks(runner)
    at = NOW + 900  # all three lapsed
    start = await snapshot(redis_client)

    assert await sweep(runner, now=at, event_id="e-a", limit=2) == ["ok", 2, 2]

    middle = await snapshot(redis_client)
    assert [entry["coupon"] for entry in appended(start, middle)] == [COUPON, COUPON_2]
    assert [entry["id"] for entry in appended(start, middle)] == ["e-a.1", "e-a.2"]
    assert value_of(middle, WALLET.locks) == [(COUPON_3, float(NOW + 200 + LOCK_SECONDS))]
    assert coupon_in(middle, COUPON_3) == coupon_in(start, COUPON_3)  # still locked, past its deadline
    assert value_of(middle, WALLET.counters) == {f"{ACTIVITY}|locked": "1"}
    assert order_in(middle, ORDER_3) == order_in(start, ORDER_3)

    assert await sweep(runner, now=at, event_id="e-b", limit=2) == ["ok", 1, 1]

    after = await snapshot(redis_client)
    third = record("available", 3, coupon_id=COUPON_3)
    assert coupon_in(after, COUPON_3) == third
    assert order_in(after, ORDER_3) == order_record("expired", 2, coupon_id=COUPON_3)
    assert value_of(after, WALLET.locks) is None
    assert value_of(after, WALLET.counters) == {f"{ACTIVITY}|locked": "0"}
    assert appended(middle, after) == [
        event(
            "lock_expired",
            "e-b.1",
            9,
            at,
            third,
            coupon_id=COUPON_3,
            order=ORDER_3,
            status="available",
            version=3,
            order_status="expired",
            order_version=2,
        )
    ]


# --- order_view ------------------------------------------------------------------------------------------------


async def test_order_view_returns_the_order_and_its_coupon(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await deliver_coupon(runner)
    await ok(lock(runner))
    stored_order = await redis_client.hget(WALLET.orders, order_field(USER, ORDER))
    stored_coupon = await redis_client.hget(WALLET.coupons, COUPON)

    reply = await unchanged(redis_client, order_view(runner))

    assert reply == ["ok", stored_order, stored_coupon]
    assert json.loads(reply[1]) == order_record("locked", 1, locked_until=NOW + LOCK_SECONDS)


@pytest.mark.parametrize(
    ("order", "user"), [("o9", USER), (ORDER, OTHER_USER)], ids=["no-order", "other-user"]
)
async def test_order_view_of_an_unknown_order_is_not_found(
    runner: ScriptRunner, redis_client: RedisClient, order: str, user: str
) -> None:
    await deliver_coupon(runner)
    await ok(lock(runner))

    assert await unchanged(redis_client, order_view(runner, order, user)) == ["not_found"]
