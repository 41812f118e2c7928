"""POST /v1/checkout/quote: the caller's coupons on a cart, usable ones best first with their discount and its
split over the lines, unusable ones with the reason; for a user token or the order service naming the user;
bad bodies refused naming the field; a quote writes nothing."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from gateway.keys import KeySpace
from gateway.settings import Settings
from tests.conftest import SERVICE_KEY
from tests.helpers import bearer, create_activity, create_template, token
from tests.http.support import assert_refusal, assert_same_keyspace, claim_url, keyspace

SERVICE = {"X-Service-Key": SERVICE_KEY}
QUOTE = "/v1/checkout/quote"
DAY = 86_400

# 11,500 in all; food 7,001 (apple, bread); fresh 4,999 (apple, salad by business line); books 2,500; no toys.
CART = [
    {"sku": "apple", "category": "food", "business_line": "fresh", "amount": 3000},
    {"sku": "bread", "category": "food", "amount": 4001},
    {"sku": "book", "category": "books", "amount": 2500},
    {"sku": "salad", "category": "deli", "business_line": "fresh", "amount": 1999},
]
SKUS = [line["sku"] for line in CART]


def split(*amounts: int) -> list[dict[str, Any]]:
    return [{"sku": sku, "amount": amount} for sku, amount in zip(SKUS, amounts, strict=True)]


async def claim(client: AsyncTestClient[Any], user: str, template_id: str, count: int = 1) -> list[str]:
    """One activity handing out ``count`` coupons of the template; ``user`` claims it; the coupon ids."""
    activity = await create_activity(client, pack=[{"template_id": template_id, "count": count}])
    reply = await client.post(claim_url(activity["id"]), headers=bearer(user))
    assert reply.status_code == 201, reply.text
    return [c["coupon_id"] for c in reply.json()["coupons"]]


async def edit_record(raw_redis: Redis, settings: Settings, user: str, coupon_id: str, **fields: Any) -> None:
    """Change a coupon's Redis record as time or checkout would (a lapse, a lock, a redeem)."""
    wallet = KeySpace(settings.redis.wallet_buckets, settings.redis.code_buckets).wallet(user)
    raw = await raw_redis.hget(wallet.coupons, coupon_id)
    assert raw is not None, coupon_id
    await raw_redis.hset(wallet.coupons, coupon_id, json.dumps({**json.loads(raw), **fields}))


def normalised(answer: dict[str, Any]) -> dict[str, Any]:
    """The contract orders ``usable``; ``unusable`` has no stated order, so compare it sorted."""
    return {**answer, "unusable": sorted(answer["unusable"], key=lambda item: item["coupon_id"])}


async def quote(client: AsyncTestClient[Any], headers: dict[str, str], **body: Any) -> dict[str, Any]:
    reply = await client.post(QUOTE, json={"lines": CART, **body}, headers=headers)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    found: dict[str, Any] = reply.json()
    assert set(found) == {"usable", "unusable"}, found
    return found


async def test_a_quote_ranks_usable_coupons_best_first_and_names_why_the_others_do_not_apply(
    client: AsyncTestClient[Any], settings: Settings, raw_redis: Redis
) -> None:
    now = int(time.time())
    window = {"valid_days": None, "valid_from": now - 100}
    # worth more than its eligible spend: gives the 2,500 of books
    (books_cash,) = await claim(
        client, "alice", (await create_template(client, amount_off=5000, scope=["books"]))["id"]
    )
    # 50 % of 11,500 capped at 1,000; ends in a day
    (half,) = await claim(
        client,
        "alice",
        (
            await create_template(
                client,
                kind="discount",
                amount_off=None,
                percent_off=50,
                max_off=1000,
                valid_until=now + DAY,
                **window,
            )
        )["id"],
    )
    # 1,000 once food (7,001) reaches 5,000; ends in 7 days, after ``half``
    (food,) = await claim(
        client,
        "alice",
        (await create_template(client, kind="threshold", amount_off=1000, min_spend=5000, scope=["food"]))[
            "id"
        ],
    )
    # 15 % of the fresh lines (4,999, matched by business line) = 749, under its cap
    (fresh,) = await claim(
        client,
        "alice",
        (
            await create_template(
                client,
                kind="discount",
                amount_off=None,
                percent_off=15,
                max_off=2000,
                min_spend=4999,
                scope=["fresh"],
            )
        )["id"],
    )
    # two of one 500-off template ending in 2 days: equal in discount and validity, so by coupon id
    twins = await claim(
        client, "alice", (await create_template(client, valid_until=now + 2 * DAY, **window))["id"], count=2
    )
    # a toys-only coupon: no line is eligible
    (toys,) = await claim(
        client, "alice", (await create_template(client, amount_off=300, scope=["toys"]))["id"]
    )
    # books reach 2,500, short of 3,000
    (short,) = await claim(
        client,
        "alice",
        (await create_template(client, kind="threshold", amount_off=200, min_spend=3000, scope=["books"]))[
            "id"
        ],
    )
    # four plain 500-off coupons (7 days): one lapses, one is locked, one redeemed, one had a lock that lapsed
    plain = (await create_template(client))["id"]
    lapsed, locked, redeemed, unlocked = [(await claim(client, "alice", plain))[0] for _ in range(4)]
    await edit_record(raw_redis, settings, "alice", lapsed, valid_until=now - 1)
    await edit_record(
        raw_redis, settings, "alice", locked, status="locked", order="o1", locked_until=now + 600
    )
    await edit_record(raw_redis, settings, "alice", redeemed, status="redeemed", order="o2")
    await edit_record(
        raw_redis, settings, "alice", unlocked, status="locked", order="o3", locked_until=now - 1
    )
    (bobs,) = await claim(client, "bob", plain)  # another user's coupon: only in bob's quote

    # The redeemed coupon is in neither list.
    expected = {
        "usable": [
            {"coupon_id": books_cash, "discount": 2500, "split": split(0, 0, 2500, 0)},
            {"coupon_id": half, "discount": 1000, "split": split(261, 348, 217, 174)},
            {"coupon_id": food, "discount": 1000, "split": split(429, 571, 0, 0)},
            {"coupon_id": fresh, "discount": 749, "split": split(449, 0, 0, 300)},
            *[
                {"coupon_id": twin, "discount": 500, "split": split(130, 174, 109, 87)}
                for twin in sorted(twins)
            ],
            {"coupon_id": unlocked, "discount": 500, "split": split(130, 174, 109, 87)},
        ],
        "unusable": sorted(
            [
                {"coupon_id": toys, "reason": "scope"},
                {"coupon_id": short, "reason": "threshold"},
                {"coupon_id": lapsed, "reason": "expired"},
                {"coupon_id": locked, "reason": "locked"},
            ],
            key=lambda item: item["coupon_id"],
        ),
    }
    before = await keyspace(raw_redis)
    assert normalised(await quote(client, bearer("alice"))) == expected
    # The order service names the user (no token of theirs needed) and gets the same answer.
    assert normalised(await quote(client, SERVICE, user_id="alice")) == expected
    assert await quote(client, SERVICE, user_id="bob") == {
        "usable": [{"coupon_id": bobs, "discount": 500, "split": split(130, 174, 109, 87)}],
        "unusable": [],
    }
    assert await quote(client, SERVICE, user_id="carol") == {"usable": [], "unusable": []}
    # Nothing changed: not the lapsed coupon, not the lapsed lock, no counters, no streams.
    assert_same_keyspace(before, await keyspace(raw_redis))


async def test_a_user_token_may_not_name_a_user(client: AsyncTestClient[Any]) -> None:
    await claim(client, "alice", (await create_template(client))["id"])
    for named in ("alice", "mallory"):
        reply = await client.post(QUOTE, json={"lines": CART, "user_id": named}, headers=bearer("mallory"))
        assert_refusal(reply, 400, "invalid_request", "user_id")
    reply = await client.post(QUOTE, json={"lines": CART, "user_id": "alice"}, headers=bearer("alice"))
    assert_refusal(reply, 400, "invalid_request", "user_id")


async def test_a_service_call_must_name_a_well_formed_user(client: AsyncTestClient[Any]) -> None:
    assert_refusal(
        await client.post(QUOTE, json={"lines": CART}, headers=SERVICE), 400, "invalid_request", "user_id"
    )
    reply = await client.post(QUOTE, json={"lines": CART, "user_id": "a b"}, headers=SERVICE)
    assert_refusal(reply, 400, "invalid_request", "user_id")


async def test_a_quote_needs_a_credential(client: AsyncTestClient[Any]) -> None:
    body = {"lines": CART}
    assert_refusal(await client.post(QUOTE, json=body), 401, "unauthorized")
    wrong_key = {"X-Service-Key": "not-the-key-0123456789"}
    assert_refusal(
        await client.post(QUOTE, json={**body, "user_id": "alice"}, headers=wrong_key), 401, "unauthorized"
    )
    expired = token("alice", now=int(time.time()) - 3610, ttl_seconds=3600)
    reply = await client.post(QUOTE, json=body, headers={"Authorization": f"Bearer {expired}"})
    assert_refusal(reply, 401, "unauthorized")
    assert_refusal(
        await client.post(QUOTE, json=body, headers={"Authorization": "Bearer nope"}), 401, "unauthorized"
    )


async def test_credentials_are_checked_before_the_body(client: AsyncTestClient[Any]) -> None:
    bodies: list[dict[str, Any]] = [
        {"lines": []},
        {"colour": "red"},
        {"lines": [{"sku": "a", "category": "x", "amount": -1}]},
    ]
    for body in bodies:
        assert_refusal(await client.post(QUOTE, json=body), 401, "unauthorized")
    assert_refusal(
        await client.post(QUOTE, content=b"{not json", headers={"Content-Type": "application/json"}),
        401,
        "unauthorized",
    )


def line(n: int, **fields: Any) -> dict[str, Any]:
    return {"sku": f"sku-{n}", "category": "food", "amount": 100, **fields}


BAD_BODIES: list[tuple[str, Any, str]] = [
    ("duplicate-sku", {"lines": [line(1), line(2), {**line(3), "sku": "sku-1"}]}, "lines"),
    ("negative-amount", {"lines": [line(1), line(2, amount=-1)]}, "lines[1].amount"),
    ("amount-over-10^12", {"lines": [line(1, amount=10**12 + 1)]}, "lines[0].amount"),
    ("fractional-amount", {"lines": [line(1, amount=1.5)]}, "lines[0].amount"),
    ("amount-as-text", {"lines": [line(1, amount="100")]}, "lines[0].amount"),
    ("101-lines", {"lines": [line(n) for n in range(101)]}, "lines"),
    ("no-lines", {"lines": []}, "lines"),
    ("lines-missing", {}, "lines"),
    ("lines-not-a-list", {"lines": {"sku": "a"}}, "lines"),
    ("unknown-field", {"lines": [line(1)], "coupon_id": "x"}, "coupon_id"),
    ("unknown-line-field", {"lines": [line(1, price=3)]}, "lines[0].price"),
    ("missing-sku", {"lines": [{"category": "food", "amount": 1}]}, "lines[0].sku"),
    ("missing-category", {"lines": [{"sku": "a", "amount": 1}]}, "lines[0].category"),
    ("missing-amount", {"lines": [{"sku": "a", "category": "food"}]}, "lines[0].amount"),
    ("empty-sku", {"lines": [line(1, sku="")]}, "lines[0].sku"),
]


@pytest.mark.parametrize(
    ("body", "field"), [case[1:] for case in BAD_BODIES], ids=[case[0] for case in BAD_BODIES]
)
async def test_a_bad_body_is_refused_naming_the_field(
    client: AsyncTestClient[Any], raw_redis: Redis, body: Any, field: str
) -> None:
    before = await keyspace(raw_redis)
    for headers, extra in ((bearer("alice"), {}), (SERVICE, {"user_id": "alice"})):
        reply = await client.post(QUOTE, json={**body, **extra}, headers=headers)
        assert_refusal(reply, 400, "invalid_request", field)
    assert_same_keyspace(before, await keyspace(raw_redis))


async def test_malformed_requests_are_refused(client: AsyncTestClient[Any]) -> None:
    reply = await client.post(
        QUOTE, content=b"{not json", headers={**bearer("alice"), "Content-Type": "application/json"}
    )
    assert_refusal(reply, 400, "invalid_request")
    reply = await client.post(
        QUOTE, content=b"lines", headers={**bearer("alice"), "Content-Type": "text/plain"}
    )
    assert_refusal(reply, 415, "invalid_request")
    assert_refusal(await client.get(QUOTE, headers=bearer("alice")), 405, "invalid_request")
    assert_refusal(
        await client.post(f"{QUOTE}?user_id=alice", json={"lines": CART}, headers=SERVICE),
        400,
        "invalid_request",
        "user_id",
    )


async def test_the_limits_themselves_are_accepted(client: AsyncTestClient[Any]) -> None:
    """100 lines, amounts 0 and 10**12: accepted, and a 100 % discount without a cap takes the whole cart."""
    (coupon,) = await claim(
        client,
        "alice",
        (await create_template(client, kind="discount", amount_off=None, percent_off=100))["id"],
    )
    lines = [line(n, amount=10**12 if n % 2 else 0) for n in range(100)]
    reply = await client.post(QUOTE, json={"lines": lines}, headers=bearer("alice"))
    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "usable": [
            {
                "coupon_id": coupon,
                "discount": 50 * 10**12,
                "split": [{"sku": f"sku-{n}", "amount": 10**12 if n % 2 else 0} for n in range(100)],
            }
        ],
        "unusable": [],
    }


async def test_a_wallet_of_more_than_a_page_is_quoted_whole(client: AsyncTestClient[Any]) -> None:
    """150 coupons, past the wallet script's 100-item page: every one is quoted, ties ranked by coupon id."""
    now = int(time.time())
    template = await create_template(client, valid_days=None, valid_from=now - 100, valid_until=now + DAY)
    ids = await claim(client, "alice", template["id"], count=100)
    ids += await claim(client, "alice", template["id"], count=50)
    assert len(set(ids)) == 150
    answer = await quote(client, bearer("alice"))
    assert answer["unusable"] == []
    assert [item["coupon_id"] for item in answer["usable"]] == sorted(ids)
    assert {item["discount"] for item in answer["usable"]} == {500}


async def test_a_coupon_whose_window_has_not_opened_is_not_usable(client: AsyncTestClient[Any]) -> None:
    now = int(time.time())
    (early,) = await claim(
        client,
        "alice",
        (
            await create_template(
                client, amount_off=900, valid_days=None, valid_from=now + DAY, valid_until=now + 2 * DAY
            )
        )["id"],
    )
    (ready,) = await claim(client, "alice", (await create_template(client))["id"])
    answer = await quote(client, bearer("alice"))
    assert [item["coupon_id"] for item in answer["usable"]] == [ready]
    assert early not in [item["coupon_id"] for item in answer["usable"]]


async def test_a_line_may_name_any_category_a_template_can_be_scoped_to(client: AsyncTestClient[Any]) -> None:
    for word in ("home garden", "家电"):
        (coupon,) = await claim(client, "alice", (await create_template(client, scope=[word]))["id"])
        lines = [{"sku": "x", "category": word, "amount": 2000}]
        reply = await client.post(QUOTE, json={"lines": lines}, headers=bearer("alice"))
        assert reply.status_code == 200, reply.text
        usable = reply.json()["usable"]
        assert {"coupon_id": coupon, "discount": 500, "split": [{"sku": "x", "amount": 500}]} in usable
