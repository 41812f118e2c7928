"""The claim script against real Redis: every reply, and every key it touches before and after."""

from __future__ import annotations

import json
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.events import SCHEMA_VERSION
from gateway.keys import KeySpace
from gateway.scripts.runner import RedisClient
from gateway.settings import Settings
from tests.lua.conftest import MakeActivity
from tests.lua.support import (
    DAY,
    HASH_A,
    HASH_B,
    NOW,
    Claimed,
    Claimer,
    changed,
    command_calls,
    last_event,
    snapshot,
)

ACT = KeySpace.activity("act1")


async def refused(claimer: Claimer, client: RedisClient, outcome: str, **call: Any) -> Claimed:
    """A refusal (or a replay): exactly ``[outcome]`` (``["replay", answer]``), and not one key created,
    changed or deleted anywhere."""
    before = await snapshot(client)
    done = await claimer(**call)
    assert done.reply[0] == outcome, (done.reply, call)
    assert len(done.reply) == (2 if outcome == "replay" else 1), done.reply
    assert await snapshot(client) == before, f"{outcome} wrote something"
    return done


async def succeeded(claimer: Claimer, client: RedisClient, **call: Any) -> Claimed:
    """A success: ok, the answer is JSON, and the partition's seq moved by exactly one."""
    seq = int(await client.get(ACT.seq) or 0)
    events = await client.xlen(ACT.events)
    done = await claimer(**call)
    assert done.outcome == "ok", (done.reply, call)
    json.loads(done.answer)
    assert int(await client.get(ACT.seq)) == seq + 1
    assert await client.xlen(ACT.events) == events + 1
    return done


def single_answer(claim_id: str, now: int = NOW, *, template: str = "t1", days: int = 7) -> str:
    return (
        f'{{"claim_id":"{claim_id}","coupons":[{{"coupon_id":"{claim_id}.1","template_id":"{template}",'
        f'"valid_from":{now},"valid_until":{now + days * DAY}}}]}}'
    )


# --- ok --------------------------------------------------------------------------------------------------


async def test_ok_with_key_writes_each_key_once(
    claimer: Claimer, make_activity: MakeActivity, redis_client: RedisClient, settings: Settings
) -> None:
    await make_activity(stock=5, per_user_limit=2, per_device_limit=2, allow=["u1"])
    before = await snapshot(redis_client)

    done = await claimer(
        user="u1", device="d1", channel="app", key="k-1", body=HASH_A, claim_id="c1", event_id="e1"
    )

    ttl = settings.claim.idempotency_ttl_seconds
    assert done.reply == ["ok", single_answer("c1")]
    assert done.idem == ACT.idempotency("u1", "k-1")
    after = await snapshot(redis_client)
    assert changed(before, after) == {
        ACT.config,
        ACT.user_counts,
        ACT.device_counts,
        done.idem,
        ACT.seq,
        ACT.events,
    }
    config_before, config_after = before[ACT.config][1], after[ACT.config][1]
    assert config_after == {**config_before, "stock_left": "4", "taken": "1"}
    assert after[ACT.user_counts][1] == {"u1": "1"}
    assert after[ACT.device_counts][1] == {"d1": "1"}
    assert after[done.idem][:2] == ("string", f"{HASH_A}|{done.answer}")
    assert ttl >= DAY
    assert ttl - 5 <= await redis_client.ttl(done.idem) <= ttl
    assert after[ACT.seq][1] == "2"
    assert after[ACT.allow_list] == before[ACT.allow_list]
    assert await redis_client.exists(ACT.no_idempotency) == 0
    entries = after[ACT.events][1]["entries"]
    assert len(entries) == 2
    assert entries[-1][1] == {
        "type": "claimed",
        "v": str(SCHEMA_VERSION),
        "id": "e1",
        "seq": "2",
        "at": str(NOW),
        "activity": "act1",
        "claim_id": "c1",
        "user": "u1",
        "device": "d1",
        "channel": "app",
        "mode": "claim",
        "by": "",
        "answer": done.answer,
        "ordinal": "1",
        "idem": done.idem,
        "idem_hash": HASH_A,
        "idem_expires": str(NOW + ttl),
    }


async def test_ok_without_key_touches_no_idempotency_key(
    claimer: Claimer, make_activity: MakeActivity, redis_client: RedisClient
) -> None:
    await make_activity()
    before = await snapshot(redis_client)

    done = await claimer(user="u1", device="", claim_id="c1", event_id="e1", body=HASH_B)

    assert done.reply == ["ok", single_answer("c1")]
    assert done.idem == ACT.no_idempotency
    after = await snapshot(redis_client)
    assert changed(before, after) == {ACT.config, ACT.user_counts, ACT.seq, ACT.events}  # no device, no idem
    assert not any(":idem:" in key for key in after)
    event = await last_event(redis_client, ACT.events)
    assert event == {
        "type": "claimed",
        "v": str(SCHEMA_VERSION),
        "id": "e1",
        "seq": "2",
        "at": str(NOW),
        "activity": "act1",
        "claim_id": "c1",
        "user": "u1",
        "device": "",
        "channel": "",
        "mode": "claim",
        "by": "",
        "answer": done.answer,
        "ordinal": "1",
        "idem": "",
        "idem_hash": HASH_B,
        "idem_expires": "",
    }


async def test_pack_issues_every_coupon(
    claimer: Claimer, make_activity: MakeActivity, redis_client: RedisClient
) -> None:
    pack = [
        {"template_id": "t1", "count": 2, "valid_days": 7},
        {"template_id": "t2", "count": 1, "valid_from": NOW - 100, "valid_until": NOW + 1000},
    ]
    await make_activity(pack=pack, stock=2)
    now = NOW + 30

    done = await succeeded(claimer, redis_client, now=now, claim_id="c9", key="k")

    assert json.loads(done.answer) == {
        "claim_id": "c9",
        "coupons": [
            {"coupon_id": "c9.1", "template_id": "t1", "valid_from": now, "valid_until": now + 7 * DAY},
            {"coupon_id": "c9.2", "template_id": "t1", "valid_from": now, "valid_until": now + 7 * DAY},
            {"coupon_id": "c9.3", "template_id": "t2", "valid_from": NOW - 100, "valid_until": NOW + 1000},
        ],
    }
    config = await redis_client.hgetall(ACT.config)
    assert (config["stock_left"], config["taken"]) == ("1", "1")  # one pack, however many coupons
    assert (await last_event(redis_client, ACT.events))["answer"] == done.answer
    assert await redis_client.get(done.idem) == f"{HASH_A}|{done.answer}"


# --- idempotency ------------------------------------------------------------------------------------------


async def test_replay_returns_the_same_answer_and_takes_nothing(
    claimer: Claimer, make_activity: MakeActivity, redis_client: RedisClient
) -> None:
    await make_activity(stock=1)
    first = await succeeded(claimer, redis_client, user="u1", key="k-1", claim_id="c1")
    assert (await redis_client.hgetall(ACT.config))["stock_left"] == "0"

    # Sold out now, paused later, blocked even: the first answer is still the answer.
    again = await refused(claimer, redis_client, "replay", user="u1", key="k-1", now=NOW + 60)
    assert again.reply == ["replay", first.answer]
    await refused(claimer, redis_client, "sold_out", user="u2", key="k-1")
    await refused(claimer, redis_client, "sold_out", user="u1")  # sold out before the user's limit
    await redis_client.hset(ACT.config, "status", "paused")
    await refused(claimer, redis_client, "replay", user="u1", key="k-1")
    await refused(claimer, redis_client, "replay", user="u1", key="k-1", blocked=True)


async def test_replay_reply_carries_the_answer(
    claimer: Claimer, make_activity: MakeActivity, redis_client: RedisClient
) -> None:
    await make_activity()
    first = await claimer(user="u1", key="k-1", claim_id="c1")
    before = await snapshot(redis_client)
    again = await claimer(user="u1", key="k-1", claim_id="c2", event_id="e2")
    assert again.reply == ["replay", first.answer] == ["replay", single_answer("c1")]
    assert await snapshot(redis_client) == before


async def test_idempotency_conflict(
    claimer: Claimer, make_activity: MakeActivity, redis_client: RedisClient
) -> None:
    await make_activity(per_user_limit=5)
    await succeeded(claimer, redis_client, user="u1", key="k-1", body=HASH_A)
    await refused(claimer, redis_client, "idempotency_conflict", user="u1", key="k-1", body=HASH_B)
    await refused(
        claimer, redis_client, "idempotency_conflict", user="u1", key="k-1", body=HASH_B, blocked=True
    )
    # Another key of the same user is a new request.
    await succeeded(claimer, redis_client, user="u1", key="k-2", body=HASH_B)


async def test_refusal_with_a_key_stores_no_answer(
    claimer: Claimer, make_activity: MakeActivity, redis_client: RedisClient
) -> None:
    await make_activity(stock=0)
    done = await refused(claimer, redis_client, "sold_out", user="u1", key="k-1")
    assert await redis_client.exists(done.idem) == 0


# --- blocked, not_found, status, window -------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"stock": 0},
        {"status": "paused"},
        {"status": "ended"},
        {"starts_at": NOW + 10},
        {"elig": {"min_orders": 3}},
    ],
    ids=["open", "sold-out", "paused", "ended", "not-started", "not-eligible"],
)
async def test_blocked_wins(
    claimer: Claimer, make_activity: MakeActivity, redis_client: RedisClient, config: dict[str, Any]
) -> None:
    await make_activity(**config)
    await refused(claimer, redis_client, "blocked", blocked=True, key="k-1")


async def test_blocked_even_without_activity(claimer: Claimer, redis_client: RedisClient) -> None:
    await refused(claimer, redis_client, "blocked", blocked=True)


async def test_not_found(claimer: Claimer, make_activity: MakeActivity, redis_client: RedisClient) -> None:
    await make_activity("other")
    await refused(claimer, redis_client, "not_found", key="k-1")
    await refused(claimer, redis_client, "not_found", mode="grant", operator="ops", device="")
    for key in (ACT.config, ACT.user_counts, ACT.seq, ACT.events):
        assert await redis_client.exists(key) == 0


async def test_ended_by_status(
    claimer: Claimer, make_activity: MakeActivity, redis_client: RedisClient
) -> None:
    await make_activity(status="ended")
    await refused(claimer, redis_client, "ended")


@pytest.mark.parametrize("after_end", [0, 1, 3600])
async def test_ended_by_window(
    claimer: Claimer, make_activity: MakeActivity, redis_client: RedisClient, after_end: int
) -> None:
    await make_activity(ends_at=NOW + 100)
    await refused(claimer, redis_client, "ended", now=NOW + 100 + after_end)


async def test_last_second_of_window_is_open(
    claimer: Claimer, make_activity: MakeActivity, redis_client: RedisClient
) -> None:
    await make_activity(ends_at=NOW + 100)
    await succeeded(claimer, redis_client, now=NOW + 99)


async def test_paused(claimer: Claimer, make_activity: MakeActivity, redis_client: RedisClient) -> None:
    await make_activity(status="paused")
    await refused(claimer, redis_client, "paused", key="k-1")


async def test_not_started(claimer: Claimer, make_activity: MakeActivity, redis_client: RedisClient) -> None:
    await make_activity(starts_at=NOW + 100, ends_at=NOW + 200)
    await refused(claimer, redis_client, "not_started", now=NOW + 99)
    await succeeded(claimer, redis_client, now=NOW + 100)  # starts_at itself is open


# --- stock -----------------------------------------------------------------------------------------------


async def test_sold_out_writes_nothing(
    claimer: Claimer, make_activity: MakeActivity, redis_client: RedisClient
) -> None:
    await make_activity(stock=2, per_user_limit=1)
    await succeeded(claimer, redis_client, user="u1", device="d1")
    await succeeded(claimer, redis_client, user="u2", device="d2")
    config = await redis_client.hgetall(ACT.config)
    assert (config["stock_left"], config["taken"]) == ("0", "2")
    await refused(claimer, redis_client, "sold_out", user="u3", device="d3", key="k-3")


async def test_sold_out_costs_one_hmget(claimer: Claimer, make_activity: MakeActivity, plain: Redis) -> None:
    """The header's promise: a sold-out claim (without a key) reads the config once and nothing else."""
    await make_activity(stock=0, elig={"users": True}, per_device_limit=1)
    reads = ("hmget", "hget", "hgetall", "get", "sismember", "exists", "hexists")
    before = {name: await command_calls(plain, name) for name in reads}
    done = await claimer(user="u1")
    assert done.reply == ["sold_out"]
    after = {name: await command_calls(plain, name) for name in reads}
    assert {name: after[name] - before[name] for name in reads} == {
        name: int(name == "hmget") for name in reads
    }


async def test_zero_stock_is_sold_out(
    claimer: Claimer, make_activity: MakeActivity, redis_client: RedisClient
) -> None:
    await make_activity(stock=0)
    await refused(claimer, redis_client, "sold_out")


# --- eligibility -----------------------------------------------------------------------------------------

ELIGIBILITY = [
    # (id, elig rules, allow-list, failing facts, passing facts)
    (
        "new_within_days",
        {"new_within_days": 7},
        [],
        [{"reg": NOW - 7 * DAY - 1}, {"reg": None}],
        [{"reg": NOW - 7 * DAY}, {"reg": NOW}],
    ),
    ("first_order", {"first_order": True}, [], [{"orders": 1}, {"orders": None}], [{"orders": 0}]),
    ("min_orders", {"min_orders": 3}, [], [{"orders": 2}, {"orders": None}], [{"orders": 3}, {"orders": 40}]),
    (
        "tags",
        {"tags": ["vip", "gold"]},
        [],
        [{"tags": []}, {"tags": ["new"]}, {"tags": ["vipx", "gol"]}],
        [{"tags": ["new", "gold"]}, {"tags": ["vip"]}],
    ),
    (
        "users",
        {"users": True},
        ["u1", "u2"],
        [{"user": "u3"}, {"user": "u"}],
        [{"user": "u2"}, {"user": "u1"}],
    ),
    (
        "all-rules",
        {"new_within_days": 1, "min_orders": 1, "tags": ["vip"], "users": True},
        ["u1"],
        [
            {"reg": NOW, "orders": 1, "tags": ["vip"], "user": "u2"},
            {"reg": NOW, "orders": 0, "tags": ["vip"], "user": "u1"},
            {"reg": NOW, "orders": 1, "tags": ["x"], "user": "u1"},
            {"reg": NOW - 2 * DAY, "orders": 1, "tags": ["vip"], "user": "u1"},
        ],
        [{"reg": NOW, "orders": 1, "tags": ["vip"], "user": "u1"}],
    ),
]


@pytest.mark.parametrize(
    ("elig", "allow", "failing", "passing"), [e[1:] for e in ELIGIBILITY], ids=[e[0] for e in ELIGIBILITY]
)
async def test_eligibility_rule(
    claimer: Claimer,
    make_activity: MakeActivity,
    redis_client: RedisClient,
    elig: dict[str, Any],
    allow: list[str],
    failing: list[dict[str, Any]],
    passing: list[dict[str, Any]],
) -> None:
    await make_activity(elig=elig, allow=allow, per_user_limit=10)
    for facts in failing:
        await refused(claimer, redis_client, "not_eligible", key="k-1", **facts)
    for n, facts in enumerate(passing):
        await succeeded(claimer, redis_client, key=f"k-ok-{n}", **facts)


async def test_no_rules_means_everyone(
    claimer: Claimer, make_activity: MakeActivity, redis_client: RedisClient, plain: Redis
) -> None:
    await make_activity(elig="", allow=["u1"])
    lookups = await command_calls(plain, "sismember")
    await succeeded(claimer, redis_client, user="anyone")
    assert await command_calls(plain, "sismember") == lookups  # the allow set is read only for elig.users


# --- limits ----------------------------------------------------------------------------------------------


async def test_per_user_limit(
    claimer: Claimer, make_activity: MakeActivity, redis_client: RedisClient
) -> None:
    await make_activity(per_user_limit=2)
    await succeeded(claimer, redis_client, user="u1", device="d1")
    await succeeded(claimer, redis_client, user="u1", device="d2")
    assert await redis_client.hget(ACT.user_counts, "u1") == "2"
    await refused(claimer, redis_client, "limit_reached", user="u1", device="d3", key="k-1")
    await succeeded(claimer, redis_client, user="u2", device="d3")


async def test_per_device_limit(
    claimer: Claimer, make_activity: MakeActivity, redis_client: RedisClient
) -> None:
    await make_activity(per_user_limit=5, per_device_limit=1)
    await succeeded(claimer, redis_client, user="u1", device="d1")
    await refused(claimer, redis_client, "limit_reached", user="u2", device="d1", key="k-1")
    await refused(claimer, redis_client, "limit_reached", user="u1", device="d1")
    await succeeded(claimer, redis_client, user="u2", device="d2")
    await succeeded(claimer, redis_client, user="u1", device="")  # no device: no device limit, no count
    assert await redis_client.hgetall(ACT.device_counts) == {"d1": "1", "d2": "1"}
    assert await redis_client.hgetall(ACT.user_counts) == {"u1": "2", "u2": "1"}


async def test_device_limit_zero_means_none(
    claimer: Claimer, make_activity: MakeActivity, redis_client: RedisClient
) -> None:
    await make_activity(per_user_limit=1, per_device_limit=0)
    for user in ("u1", "u2", "u3"):
        await succeeded(claimer, redis_client, user=user, device="d1")
    assert await redis_client.hgetall(ACT.device_counts) == {"d1": "3"}


# --- grant -----------------------------------------------------------------------------------------------

GRANT = {"mode": "grant", "operator": "ops", "device": ""}


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"starts_at": NOW + 100, "ends_at": NOW + 200},
        {"ends_at": NOW},
        {"elig": {"min_orders": 5}},
        {"elig": {"users": True}},
        {"per_device_limit": 1},
    ],
    ids=["open", "not-started", "window-over", "not-eligible", "not-on-allow-list", "device-limit"],
)
async def test_grant_ignores_window_and_eligibility(
    claimer: Claimer,
    make_activity: MakeActivity,
    redis_client: RedisClient,
    settings: Settings,
    config: dict[str, Any],
) -> None:
    await make_activity(**config)
    before = await snapshot(redis_client)
    done = await succeeded(claimer, redis_client, user="u7", key="g-1", claim_id="c1", event_id="e1", **GRANT)
    assert done.idem == ACT.idempotency("ops", "g-1")  # a grant's key is the operator's
    after = await snapshot(redis_client)
    assert changed(before, after) == {ACT.config, ACT.user_counts, done.idem, ACT.seq, ACT.events}
    assert await redis_client.exists(ACT.device_counts) == 0
    assert await redis_client.hgetall(ACT.user_counts) == {"u7": "1"}
    event = await last_event(redis_client, ACT.events)
    assert event == {
        "type": "claimed",
        "v": str(SCHEMA_VERSION),
        "id": "e1",
        "seq": "2",
        "at": str(NOW),
        "activity": "act1",
        "claim_id": "c1",
        "user": "u7",
        "device": "",
        "channel": "",
        "mode": "grant",
        "by": "ops",
        "answer": done.answer,
        "ordinal": "1",
        "idem": done.idem,
        "idem_hash": HASH_A,
        "idem_expires": str(NOW + settings.claim.idempotency_ttl_seconds),
    }


@pytest.mark.parametrize(
    ("config", "outcome"),
    [({"status": "paused"}, "paused"), ({"status": "ended"}, "ended"), ({"stock": 0}, "sold_out")],
    ids=["paused", "ended", "sold-out"],
)
async def test_grant_respects_status_and_stock(
    claimer: Claimer,
    make_activity: MakeActivity,
    redis_client: RedisClient,
    config: dict[str, Any],
    outcome: str,
) -> None:
    await make_activity(**config)
    await refused(claimer, redis_client, outcome, user="u7", key="g-1", **GRANT)


async def test_grant_respects_per_user_limit(
    claimer: Claimer, make_activity: MakeActivity, redis_client: RedisClient
) -> None:
    await make_activity(per_user_limit=1)
    await succeeded(claimer, redis_client, user="u7", device="d7")
    await refused(claimer, redis_client, "limit_reached", user="u7", key="g-1", **GRANT)
    await succeeded(claimer, redis_client, user="u8", **GRANT)


async def test_grant_replay_and_conflict(
    claimer: Claimer, make_activity: MakeActivity, redis_client: RedisClient
) -> None:
    await make_activity(per_user_limit=3)
    first = await succeeded(claimer, redis_client, user="u7", key="g-1", **GRANT)
    again = await refused(claimer, redis_client, "replay", user="u7", key="g-1", **GRANT)
    assert again.reply == ["replay", first.answer]
    await refused(claimer, redis_client, "idempotency_conflict", user="u7", key="g-1", body=HASH_B, **GRANT)


# --- the contract's order --------------------------------------------------------------------------------

ORDER = [
    # (id, config, allow-list, claims that go first, the call, expected)
    ("paused+sold_out", {"status": "paused", "stock": 0}, [], [], {}, "paused"),
    ("ended+sold_out", {"status": "ended", "stock": 0}, [], [], {}, "ended"),
    ("paused+not_started", {"status": "paused", "starts_at": NOW + 10}, [], [], {}, "paused"),
    ("window_over+sold_out", {"ends_at": NOW, "stock": 0}, [], [], {}, "ended"),
    ("not_started+sold_out", {"starts_at": NOW + 10, "stock": 0}, [], [], {}, "not_started"),
    (
        "not_started+not_eligible",
        {"starts_at": NOW + 10, "elig": {"min_orders": 1}},
        [],
        [],
        {},
        "not_started",
    ),
    ("sold_out+not_eligible", {"stock": 0, "elig": {"min_orders": 1}}, [], [], {"orders": 0}, "sold_out"),
    ("sold_out+limit_reached", {"stock": 1}, [], [{"user": "u1"}], {"user": "u1"}, "sold_out"),
    (
        "not_eligible+limit_reached",
        {"elig": {"tags": ["vip"]}},
        [],
        [{"user": "u1", "tags": ["vip"]}],
        {"user": "u1", "tags": []},
        "not_eligible",
    ),
    (
        "not_on_list+device_limit",
        {"elig": {"users": True}, "per_device_limit": 1},
        ["u1"],
        [{"user": "u1", "device": "d1"}],
        {"user": "u2", "device": "d1"},
        "not_eligible",
    ),
    (
        "blocked+everything",
        {"status": "paused", "stock": 0, "starts_at": NOW + 10, "elig": {"min_orders": 9}},
        [],
        [],
        {"blocked": True},
        "blocked",
    ),
]


@pytest.mark.parametrize(
    ("config", "allow", "first", "call", "outcome"), [o[1:] for o in ORDER], ids=[o[0] for o in ORDER]
)
async def test_contract_order(
    claimer: Claimer,
    make_activity: MakeActivity,
    redis_client: RedisClient,
    config: dict[str, Any],
    allow: list[str],
    first: list[dict[str, Any]],
    call: dict[str, Any],
    outcome: str,
) -> None:
    await make_activity(allow=allow, **config)
    for earlier in first:
        await succeeded(claimer, redis_client, **earlier)
    await refused(claimer, redis_client, outcome, key="k-order", **call)
