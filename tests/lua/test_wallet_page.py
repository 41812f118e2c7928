"""wallet_page against real Redis: pages newest first, filters by the status a coupon shows now (expired past
its validity, available once a lock's deadline passed), names the order of a held coupon, and writes nothing."""

from __future__ import annotations

import json
from typing import Any

from gateway.keys import KeySpace
from gateway.scripts.runner import RedisClient, ScriptRunner
from tests.lua.support import NOW, snapshot

WALLET = KeySpace(8, 4).wallet("alice")


def record(status: str = "available", *, valid_until: int = NOW + 100, **extra: Any) -> str:
    return json.dumps({"user": "alice", "activity": "a1", "template": "t1", "claim": "c", "valid_from": NOW - 10,
                       "valid_until": valid_until, "status": status, "version": 1, **extra})  # fmt: skip


async def page(
    runner: ScriptRunner, *, cursor: str = "", limit: int = 10, status: str = ""
) -> tuple[list[Any], str]:
    reply = await runner.run(
        "wallet_page", [WALLET.coupons, WALLET.user_index("alice")], [NOW, cursor, limit, status]
    )
    assert reply[0] == "ok"
    return json.loads(reply[1]), reply[2]


async def seed(client: RedisClient) -> None:
    coupons = {
        "c1.1": record(),
        "c2.1": record(valid_until=NOW),  # lapses exactly now: expired
        "c3.1": record("locked", order="o3", locked_until=NOW + 60),
        "c4.1": record("locked", order="o4", locked_until=NOW),  # the lock's deadline passed: available
        "c5.1": record("redeemed", order="o5"),
    }
    await client.hset(WALLET.coupons, mapping=coupons)
    await client.zadd(WALLET.user_index("alice"), dict.fromkeys(coupons, 0))
    await client.hset(WALLET.coupons, "other.1", record())  # another user's coupon in the same bucket


async def test_pages_newest_first_with_the_status_each_shows_now(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await seed(redis_client)
    before = await snapshot(redis_client)
    items, next_cursor = await page(runner, limit=3)
    assert [(i["coupon_id"], i["status"], i.get("order_id")) for i in items] == [
        ("c5.1", "redeemed", "o5"), ("c4.1", "available", None), ("c3.1", "locked", "o3"),
    ]  # fmt: skip
    assert next_cursor == "c3.1"
    assert items[0] == {"coupon_id": "c5.1", "template_id": "t1", "activity_id": "a1", "status": "redeemed",
                        "valid_from": NOW - 10, "valid_until": NOW + 100, "order_id": "o5"}  # fmt: skip
    rest, last = await page(runner, cursor=next_cursor, limit=3)
    assert [(i["coupon_id"], i["status"]) for i in rest] == [("c2.1", "expired"), ("c1.1", "available")]
    assert last == ""
    assert await snapshot(redis_client) == before  # read only


async def test_a_status_filter_counts_only_matching_coupons(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await seed(redis_client)
    available, cursor = await page(runner, status="available", limit=1)
    assert [i["coupon_id"] for i in available] == ["c4.1"] and cursor == "c4.1"
    more, cursor = await page(runner, status="available", limit=1, cursor=cursor)
    assert [i["coupon_id"] for i in more] == ["c1.1"] and cursor == ""
    assert [i["coupon_id"] for i in (await page(runner, status="expired"))[0]] == ["c2.1"]
    assert [i["coupon_id"] for i in (await page(runner, status="locked"))[0]] == ["c3.1"]


async def test_an_empty_wallet_is_an_empty_list(runner: ScriptRunner, redis_client: RedisClient) -> None:
    assert await page(runner) == ([], "")


async def test_a_cursor_that_is_none_of_the_users_coupons_is_not_found(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    """Not one of the user's coupon ids (never made, or another user's in the same bucket): not_found, not a page
    of whatever sorts below it."""
    await seed(redis_client)
    before = await snapshot(redis_client)
    for cursor in ("c9.1", "c3", "other.1", "zzz"):
        reply = await runner.run(
            "wallet_page", [WALLET.coupons, WALLET.user_index("alice")], [NOW, cursor, 10, ""]
        )
        assert reply == ["not_found"], cursor
    assert await snapshot(redis_client) == before


async def test_a_vouched_cursor_pages_below_it_though_redis_no_longer_holds_it(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    """The caller found the cursor among the user's archived coupons (the ledger): the page is what sorts below."""
    await seed(redis_client)
    before = await snapshot(redis_client)
    keys = [WALLET.coupons, WALLET.user_index("alice")]

    reply = await runner.run("wallet_page", keys, [NOW, "c3.0", 10, "", "1"])

    assert reply[0] == "ok"
    assert [item["coupon_id"] for item in json.loads(reply[1])] == ["c2.1", "c1.1"]
    assert await runner.run("wallet_page", keys, [NOW, "c3.0", 10, "", ""]) == ["not_found"]  # unvouched
    assert await snapshot(redis_client) == before
