"""The checkout routes over HTTP (product.md, "HTTP contract"): lock, redeem, release, refund and the order's
view, every transition and every refusal; lock deadlines passing (moved into the past in Redis, and one real
one-second deadline); who may call; bad bodies; and the activity's checkout figures following along.

A refusal writes nothing: each one is checked against a snapshot of the whole keyspace."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, cast

import httpx
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from gateway.checkout.service import LockSweeper
from gateway.devstack.valkey import ValkeyServer
from gateway.http.app import create_app
from gateway.keys import KeySpace, WalletKeys, order_field
from gateway.scripts.runner import ScriptRunner
from gateway.settings import Settings, load_settings
from tests.conftest import SERVICE_KEY, settings_env
from tests.helpers import ADMIN, bearer, create_activity, create_template
from tests.http.support import assert_refusal, assert_same_keyspace, claim_url, keyspace
from tests.http.test_quote import CART, edit_record, split

SERVICE = {"X-Service-Key": SERVICE_KEY}
LOCK = "/v1/checkout/lock"
REDEEM = "/v1/checkout/redeem"
RELEASE = "/v1/checkout/release"
REFUND = "/v1/checkout/refund"
ORDER_ROUTES = (REDEEM, RELEASE, REFUND)
DAY = 86_400
CHECKOUT_EVENTS = frozenset({"locked", "redeemed", "released", "refunded", "lock_expired"})
LOCK_SECONDS = 900  # the default setting: 15 minutes

# A 1,000-off coupon without scope on CART (11,500): its split over apple, bread, book, salad.
SPLIT_1000 = split(261, 348, 217, 174)
# The same coupon on a 600 cart gives the 600 it is spent on.
SMALL_CART = [{"sku": "pen", "category": "office", "amount": 600}]


# ---------------------------------------------------------------------------------------------------------
# Helpers


async def claim_pack(
    client: AsyncTestClient[Any], user: str, *, count: int = 1, **template: Any
) -> tuple[str, list[str]]:
    """An activity handing out ``count`` coupons of a 1,000-off template (``template`` overrides); ``user``
    claims it. The activity id and the coupon ids."""
    made = await create_template(client, **{"amount_off": 1000, **template})
    activity = await create_activity(client, pack=[{"template_id": made["id"], "count": count}])
    reply = await client.post(claim_url(activity["id"]), headers=bearer(user))
    assert reply.status_code == 201, reply.text
    return activity["id"], [c["coupon_id"] for c in reply.json()["coupons"]]


async def claim_one(client: AsyncTestClient[Any], user: str, **template: Any) -> str:
    _, (coupon,) = await claim_pack(client, user, **template)
    return coupon


async def try_lock(
    client: AsyncTestClient[Any],
    user: str,
    order_id: str,
    coupon_id: str,
    lines: list[dict[str, Any]] | None = None,
) -> httpx.Response:
    body = {"order_id": order_id, "coupon_id": coupon_id, "lines": CART if lines is None else lines}
    return await client.post(LOCK, json=body, headers=bearer(user))


async def lock(
    client: AsyncTestClient[Any],
    user: str,
    order_id: str,
    coupon_id: str,
    lines: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    reply = await try_lock(client, user, order_id, coupon_id, lines)
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


async def try_act(client: AsyncTestClient[Any], route: str, user: str, order_id: str) -> httpx.Response:
    return await client.post(route, json={"order_id": order_id}, headers=bearer(user))


async def act(client: AsyncTestClient[Any], route: str, user: str, order_id: str) -> dict[str, Any]:
    reply = await try_act(client, route, user, order_id)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    answer: dict[str, Any] = reply.json()
    return answer


async def order_view(client: AsyncTestClient[Any], user: str, order_id: str) -> dict[str, Any]:
    reply = await client.get(f"/v1/checkout/orders/{order_id}", headers=bearer(user))
    assert reply.status_code == 200, reply.text
    view: dict[str, Any] = reply.json()
    return view


async def wallet_item(client: AsyncTestClient[Any], user: str, coupon_id: str) -> dict[str, Any]:
    """The coupon as the user's wallet shows it (``GET /v1/coupons``)."""
    reply = await client.get("/v1/coupons?limit=100", headers=bearer(user))
    assert reply.status_code == 200, reply.text
    (item,) = [c for c in reply.json()["items"] if c["coupon_id"] == coupon_id]
    found: dict[str, Any] = item
    return found


async def figures(client: AsyncTestClient[Any], activity_id: str) -> dict[str, int]:
    """The activity's checkout figures from ``GET /v1/admin/activities/{id}/stats``."""
    reply = await client.get(f"/v1/admin/activities/{activity_id}/stats", headers=ADMIN)
    assert reply.status_code == 200, reply.text
    stats = reply.json()
    return {name: stats[name] for name in ("locked", "redeemed", "redeemed_value")}


def wallet_keys(settings: Settings, user: str) -> WalletKeys:
    return KeySpace(settings.redis.wallet_buckets, settings.redis.code_buckets).wallet(user)


async def lapse(raw_redis: Redis, settings: Settings, user: str, order_id: str) -> None:
    """Move the order's lock deadline into the past, as time would: in the coupon's record, the order and the
    sweeper's index (the sweeper itself does not run here: every script must treat a lapsed lock as lapsed)."""
    wallet = wallet_keys(settings, user)
    field = order_field(user, order_id)
    raw = await raw_redis.hget(wallet.orders, field)
    assert raw is not None, field
    order = json.loads(raw)
    assert order["status"] == "locked", order
    past = int(time.time()) - 1
    await edit_record(raw_redis, settings, user, order["coupon"], locked_until=past)
    await raw_redis.hset(wallet.orders, field, json.dumps({**order, "locked_until": past}))
    await raw_redis.zadd(wallet.locks, {order["coupon"]: past})


async def event_types(raw_redis: Redis, settings: Settings, user: str) -> list[str]:
    """The types of the checkout events in the user's wallet partition's ledger stream, oldest first."""
    entries = cast(
        list[tuple[bytes, dict[bytes, bytes]]], await raw_redis.xrange(wallet_keys(settings, user).events)
    )
    types = [fields[b"type"].decode() for _, fields in entries]
    return [kind for kind in types if kind in CHECKOUT_EVENTS]


def user_in_bucket(settings: Settings, of: str, *, same: bool) -> str:
    """A user id whose wallet shares ``of``'s bucket (``same``) or lives in another one."""
    space = KeySpace(settings.redis.wallet_buckets, settings.redis.code_buckets)
    return next(
        name
        for name in (f"bob-{n}" for n in itertools.count())
        if (space.wallet_bucket(name) == space.wallet_bucket(of)) is same
    )


async def refused_without_writing(
    raw_redis: Redis, reply: Awaitable[httpx.Response], status: int, code: str, field: str | None = None
) -> None:
    """``reply`` (an awaitable response) is the refusal, and the keyspace is as it was."""
    before = await keyspace(raw_redis)
    assert_refusal(await reply, status, code, field)
    assert_same_keyspace(before, await keyspace(raw_redis))


# ---------------------------------------------------------------------------------------------------------
# Lock


async def test_a_lock_answers_the_discount_its_split_and_the_deadline(
    client: AsyncTestClient[Any], raw_redis: Redis, settings: Settings
) -> None:
    activity, (coupon,) = await claim_pack(client, "alice")
    before = int(time.time())
    reply = await try_lock(client, "alice", "o-1", coupon)
    after = int(time.time())
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    answer = reply.json()
    assert set(answer) == {"order_id", "coupon_id", "discount", "split", "locked_until"}, answer
    assert answer["order_id"] == "o-1" and answer["coupon_id"] == coupon
    assert answer["discount"] == 1000
    assert answer["split"] == SPLIT_1000
    assert sum(share["amount"] for share in answer["split"]) == answer["discount"]
    assert before + LOCK_SECONDS <= answer["locked_until"] <= after + LOCK_SECONDS

    # The same lock again, from the user or from the order service, answers the existing lock byte for byte.
    again = await try_lock(client, "alice", "o-1", coupon)
    assert again.status_code == 200 and again.content == reply.content
    body = {"order_id": "o-1", "coupon_id": coupon, "lines": CART, "user_id": "alice"}
    by_service = await client.post(LOCK, json=body, headers=SERVICE)
    assert by_service.status_code == 200 and by_service.content == reply.content
    # Even with other lines: the existing lock stands as it was made.
    other_lines = await try_lock(client, "alice", "o-1", coupon, SMALL_CART)
    assert other_lines.status_code == 200 and other_lines.content == reply.content
    assert await event_types(raw_redis, settings, "alice") == ["locked"]  # the repeats wrote nothing

    assert await order_view(client, "alice", "o-1") == {
        "order_id": "o-1",
        "coupon_id": coupon,
        "status": "locked",
        "discount": 1000,
        "locked_until": answer["locked_until"],
    }
    item = await wallet_item(client, "alice", coupon)
    assert item["status"] == "locked" and item["order_id"] == "o-1"
    assert await figures(client, activity) == {"locked": 1, "redeemed": 0, "redeemed_value": 0}


async def test_a_scoped_coupon_splits_over_its_lines_only_and_gives_at_most_their_spend(
    client: AsyncTestClient[Any],
) -> None:
    food = await claim_one(client, "alice", kind="threshold", min_spend=5000, scope=["food"])
    answer = await lock(client, "alice", "o-food", food)
    assert answer["discount"] == 1000
    assert answer["split"] == split(429, 571, 0, 0)  # book and salad are not food
    books = await claim_one(client, "alice", amount_off=5000, scope=["books"])
    answer = await lock(client, "alice", "o-books", books)
    assert answer["discount"] == 2500  # worth 5,000, but only 2,500 of books are on the cart
    assert answer["split"] == split(0, 0, 2500, 0)


async def test_an_order_holds_one_coupon_and_a_coupon_one_order(
    client: AsyncTestClient[Any], raw_redis: Redis
) -> None:
    first = await claim_one(client, "alice")
    second = await claim_one(client, "alice")
    held = await lock(client, "alice", "o-1", first)

    # Another coupon for the order holding a live lock.
    await refused_without_writing(
        raw_redis, try_lock(client, "alice", "o-1", second), 409, "coupon_unavailable"
    )
    # The coupon for another order.
    await refused_without_writing(
        raw_redis, try_lock(client, "alice", "o-2", first), 409, "coupon_unavailable"
    )
    view = await order_view(client, "alice", "o-1")
    assert view["coupon_id"] == first and view["status"] == "locked"
    assert view["locked_until"] == held["locked_until"]
    assert_refusal(await client.get("/v1/checkout/orders/o-2", headers=bearer("alice")), 404, "not_found")
    # The second coupon is still free for another order.
    assert (await lock(client, "alice", "o-2", second))["coupon_id"] == second


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ({"scope": ["toys"]}, "no line of the cart is in its scope"),
        ({"kind": "threshold", "min_spend": 20_000}, "the cart's 11,500 misses the threshold"),
        ({"kind": "threshold", "min_spend": 5000, "scope": ["books"]}, "books come to 2,500 only"),
    ],
    ids=["scope", "threshold", "scoped-threshold"],
)
async def test_a_coupon_that_does_not_apply_to_the_lines_is_not_applicable(
    client: AsyncTestClient[Any], raw_redis: Redis, template: dict[str, Any], why: str
) -> None:
    coupon = await claim_one(client, "alice", **template)
    await refused_without_writing(raw_redis, try_lock(client, "alice", "o-1", coupon), 422, "not_applicable")
    assert_refusal(await client.get("/v1/checkout/orders/o-1", headers=bearer("alice")), 404, "not_found")
    assert (await wallet_item(client, "alice", coupon))["status"] == "available", why


@pytest.mark.parametrize("same_bucket", [True, False], ids=["same-wallet-bucket", "other-wallet-bucket"])
async def test_an_unknown_coupon_or_someone_elses_is_not_found(
    client: AsyncTestClient[Any], raw_redis: Redis, settings: Settings, same_bucket: bool
) -> None:
    alices = await claim_one(client, "alice")
    bob = user_in_bucket(settings, "alice", same=same_bucket)
    await claim_one(client, bob)  # bob has a wallet of his own
    await refused_without_writing(raw_redis, try_lock(client, bob, "o-1", alices), 404, "not_found")
    body = {"order_id": "o-1", "coupon_id": alices, "lines": CART, "user_id": bob}
    await refused_without_writing(raw_redis, client.post(LOCK, json=body, headers=SERVICE), 404, "not_found")
    for unknown in ("nosuchclaim.1", f"{alices[:-1]}9"):
        await refused_without_writing(raw_redis, try_lock(client, "alice", "o-1", unknown), 404, "not_found")
    # Alice herself can lock it: the refusals were about the caller, not the coupon.
    assert (await lock(client, "alice", "o-1", alices))["coupon_id"] == alices


# An id in the contract's alphabet (1-64 of [A-Za-z0-9_.:-]) whose shape is not the one the gateway makes: which
# ids the gateway makes is its own business, so these name no coupon (404), like an unknown activity or order.
NEVER_ISSUED = ["no-such-coupon-x", "claim", "a.b.c", "x:1", "9" * 64, "c.1234567"]


@pytest.mark.parametrize("coupon_id", NEVER_ISSUED)
async def test_a_coupon_id_the_gateway_never_issued_is_not_found(
    client: AsyncTestClient[Any], raw_redis: Redis, coupon_id: str
) -> None:
    alices = await claim_one(client, "alice")
    await refused_without_writing(raw_redis, try_lock(client, "alice", "o-1", coupon_id), 404, "not_found")
    body = {"order_id": "o-1", "coupon_id": coupon_id, "lines": CART, "user_id": "alice"}
    await refused_without_writing(raw_redis, client.post(LOCK, json=body, headers=SERVICE), 404, "not_found")
    assert (await lock(client, "alice", "o-1", alices))["coupon_id"] == alices  # the order was left free


async def test_a_coupon_past_or_before_its_validity_is_unavailable(
    client: AsyncTestClient[Any], raw_redis: Redis, settings: Settings
) -> None:
    now = int(time.time())
    lapsed = await claim_one(client, "alice")
    await edit_record(raw_redis, settings, "alice", lapsed, valid_until=now - 1)
    await refused_without_writing(
        raw_redis, try_lock(client, "alice", "o-1", lapsed), 409, "coupon_unavailable"
    )
    early = await claim_one(client, "alice", valid_days=None, valid_from=now + DAY, valid_until=now + 2 * DAY)
    await refused_without_writing(
        raw_redis, try_lock(client, "alice", "o-1", early), 409, "coupon_unavailable"
    )


# ---------------------------------------------------------------------------------------------------------
# Redeem, release, refund


async def test_a_redeem_answers_redeemed_and_a_repeat_answers_the_same(
    client: AsyncTestClient[Any], raw_redis: Redis, settings: Settings
) -> None:
    activity, (coupon, other) = await claim_pack(client, "alice", count=2)
    await lock(client, "alice", "o-1", coupon)
    first = await try_act(client, REDEEM, "alice", "o-1")
    assert first.status_code == 200, first.text
    assert first.json() == {"order_id": "o-1", "coupon_id": coupon, "status": "redeemed"}
    before = await keyspace(raw_redis)
    again = await try_act(client, REDEEM, "alice", "o-1")
    assert again.status_code == 200 and again.content == first.content
    assert_same_keyspace(before, await keyspace(raw_redis))
    assert await event_types(raw_redis, settings, "alice") == ["locked", "redeemed"]

    assert await order_view(client, "alice", "o-1") == {
        "order_id": "o-1",
        "coupon_id": coupon,
        "status": "redeemed",
        "discount": 1000,
    }
    item = await wallet_item(client, "alice", coupon)
    assert item["status"] == "redeemed" and item["order_id"] == "o-1"
    assert await figures(client, activity) == {"locked": 0, "redeemed": 1, "redeemed_value": 1000}

    # A used coupon cannot be locked again, nor can a paid order take another coupon or be released.
    await refused_without_writing(
        raw_redis, try_lock(client, "alice", "o-2", coupon), 409, "coupon_unavailable"
    )
    await refused_without_writing(
        raw_redis, try_lock(client, "alice", "o-1", other), 409, "coupon_unavailable"
    )
    await refused_without_writing(
        raw_redis, try_act(client, RELEASE, "alice", "o-1"), 409, "coupon_unavailable"
    )


async def test_a_release_frees_the_coupon_and_a_repeat_answers_the_same(
    client: AsyncTestClient[Any], raw_redis: Redis, settings: Settings
) -> None:
    activity, (coupon,) = await claim_pack(client, "alice")
    await lock(client, "alice", "o-1", coupon)
    # An order not yet paid cannot be refunded.
    await refused_without_writing(
        raw_redis, try_act(client, REFUND, "alice", "o-1"), 409, "coupon_unavailable"
    )

    first = await try_act(client, RELEASE, "alice", "o-1")
    assert first.status_code == 200, first.text
    assert first.json() == {"order_id": "o-1", "coupon_id": coupon, "status": "available"}
    before = await keyspace(raw_redis)
    again = await try_act(client, RELEASE, "alice", "o-1")
    assert again.status_code == 200 and again.content == first.content
    assert_same_keyspace(before, await keyspace(raw_redis))
    assert await event_types(raw_redis, settings, "alice") == ["locked", "released"]

    assert await order_view(client, "alice", "o-1") == {
        "order_id": "o-1",
        "coupon_id": coupon,
        "status": "available",
        "discount": 1000,
    }
    item = await wallet_item(client, "alice", coupon)
    assert item["status"] == "available" and "order_id" not in item
    assert await figures(client, activity) == {"locked": 0, "redeemed": 0, "redeemed_value": 0}
    # Free again: another order may lock it.
    assert (await lock(client, "alice", "o-2", coupon))["coupon_id"] == coupon


async def test_a_refund_within_validity_returns_the_coupon(
    client: AsyncTestClient[Any], raw_redis: Redis, settings: Settings
) -> None:
    activity, (coupon,) = await claim_pack(client, "alice")
    await lock(client, "alice", "o-1", coupon)
    await act(client, REDEEM, "alice", "o-1")
    first = await try_act(client, REFUND, "alice", "o-1")
    assert first.status_code == 200, first.text
    assert first.json() == {"order_id": "o-1", "coupon_id": coupon, "status": "available", "returned": True}
    before = await keyspace(raw_redis)
    again = await try_act(client, REFUND, "alice", "o-1")
    assert again.status_code == 200 and again.content == first.content
    assert_same_keyspace(before, await keyspace(raw_redis))
    assert await event_types(raw_redis, settings, "alice") == ["locked", "redeemed", "refunded"]

    item = await wallet_item(client, "alice", coupon)
    assert item["status"] == "available" and "order_id" not in item
    assert (await order_view(client, "alice", "o-1"))["status"] == "available"
    assert await figures(client, activity) == {"locked": 0, "redeemed": 0, "redeemed_value": 0}
    # A refunded order is not released.
    await refused_without_writing(
        raw_redis, try_act(client, RELEASE, "alice", "o-1"), 409, "coupon_unavailable"
    )
    # A refunded order keeps its place: it locks nothing again, and a repeat refund still answers the first.
    await refused_without_writing(
        raw_redis, try_lock(client, "alice", "o-1", coupon), 409, "coupon_unavailable"
    )
    # The returned coupon serves a new order.
    await lock(client, "alice", "o-2", coupon)
    assert (await act(client, REDEEM, "alice", "o-2"))["status"] == "redeemed"
    assert (await try_act(client, REFUND, "alice", "o-1")).content == first.content


async def test_a_refund_after_the_coupons_validity_keeps_it_redeemed(
    client: AsyncTestClient[Any], raw_redis: Redis, settings: Settings
) -> None:
    activity, (coupon,) = await claim_pack(client, "alice")
    await lock(client, "alice", "o-1", coupon)
    await act(client, REDEEM, "alice", "o-1")
    await edit_record(raw_redis, settings, "alice", coupon, valid_until=int(time.time()) - 1)
    first = await try_act(client, REFUND, "alice", "o-1")
    assert first.status_code == 200, first.text
    assert first.json() == {"order_id": "o-1", "coupon_id": coupon, "status": "redeemed", "returned": False}
    before = await keyspace(raw_redis)
    again = await try_act(client, REFUND, "alice", "o-1")
    assert again.status_code == 200 and again.content == first.content
    assert_same_keyspace(before, await keyspace(raw_redis))

    item = await wallet_item(client, "alice", coupon)
    assert item["status"] == "redeemed" and item["order_id"] == "o-1"
    assert await order_view(client, "alice", "o-1") == {
        "order_id": "o-1",
        "coupon_id": coupon,
        "status": "redeemed",
        "discount": 1000,
    }
    assert await figures(client, activity) == {"locked": 0, "redeemed": 1, "redeemed_value": 1000}
    await refused_without_writing(
        raw_redis, try_lock(client, "alice", "o-2", coupon), 409, "coupon_unavailable"
    )


async def test_an_unknown_order_is_not_found(client: AsyncTestClient[Any], raw_redis: Redis) -> None:
    coupon = await claim_one(client, "alice")
    await lock(client, "alice", "o-1", coupon)
    for route in ORDER_ROUTES:
        await refused_without_writing(raw_redis, try_act(client, route, "alice", "o-404"), 404, "not_found")
        body = {"order_id": "o-404", "user_id": "alice"}
        await refused_without_writing(
            raw_redis, client.post(route, json=body, headers=SERVICE), 404, "not_found"
        )
    for path in ("/v1/checkout/orders/o-404", "/v1/checkout/orders/o-1.x"):
        assert_refusal(await client.get(path, headers=bearer("alice")), 404, "not_found")
    assert_refusal(
        await client.get("/v1/checkout/orders/o-404?user_id=alice", headers=SERVICE), 404, "not_found"
    )


async def test_the_order_view_follows_the_order_through_its_states(
    client: AsyncTestClient[Any], raw_redis: Redis, settings: Settings
) -> None:
    paid, cancelled = await claim_one(client, "alice"), await claim_one(client, "alice")

    def view(order_id: str, coupon: str, status: str, **more: int) -> dict[str, Any]:
        return {"order_id": order_id, "coupon_id": coupon, "status": status, "discount": 1000, **more}

    held = await lock(client, "alice", "o-paid", paid)
    assert await order_view(client, "alice", "o-paid") == view(
        "o-paid", paid, "locked", locked_until=held["locked_until"]
    )
    await act(client, REDEEM, "alice", "o-paid")
    assert await order_view(client, "alice", "o-paid") == view("o-paid", paid, "redeemed")
    await act(client, REFUND, "alice", "o-paid")
    assert await order_view(client, "alice", "o-paid") == view("o-paid", paid, "available")

    small = await lock(client, "alice", "o-cancelled", cancelled, SMALL_CART)
    assert small["discount"] == 600 and small["split"] == [{"sku": "pen", "amount": 600}]
    assert await order_view(client, "alice", "o-cancelled") == {
        **view("o-cancelled", cancelled, "locked", locked_until=small["locked_until"]),
        "discount": 600,
    }
    await act(client, RELEASE, "alice", "o-cancelled")
    assert await order_view(client, "alice", "o-cancelled") == {
        **view("o-cancelled", cancelled, "available"),
        "discount": 600,
    }

    # The order service reads the same view naming the user.
    reply = await client.get("/v1/checkout/orders/o-paid?user_id=alice", headers=SERVICE)
    assert reply.status_code == 200 and reply.json() == view("o-paid", paid, "available")
    # A lapsed lock shows as available, without a deadline.
    lapsing = await claim_one(client, "alice")
    await lock(client, "alice", "o-lapsed", lapsing)
    await lapse(raw_redis, settings, "alice", "o-lapsed")
    assert await order_view(client, "alice", "o-lapsed") == view("o-lapsed", lapsing, "available")


# ---------------------------------------------------------------------------------------------------------
# Lock deadlines


async def test_after_the_deadline_another_order_may_lock_the_coupon(
    client: AsyncTestClient[Any], raw_redis: Redis, settings: Settings
) -> None:
    activity, (coupon,) = await claim_pack(client, "alice")
    await lock(client, "alice", "o-1", coupon)
    await lapse(raw_redis, settings, "alice", "o-1")

    item = await wallet_item(client, "alice", coupon)
    assert item["status"] == "available" and "order_id" not in item
    available = await client.get("/v1/coupons?status=available", headers=bearer("alice"))
    assert [c["coupon_id"] for c in available.json()["items"]] == [coupon]

    taken = await lock(client, "alice", "o-2", coupon)
    assert taken["coupon_id"] == coupon and taken["locked_until"] > int(time.time())
    # The lapsed lock is not counted twice.
    assert await figures(client, activity) == {"locked": 1, "redeemed": 0, "redeemed_value": 0}
    # The first order's redeem finds the coupon held elsewhere; its release answers the coupon's state.
    await refused_without_writing(
        raw_redis, try_act(client, REDEEM, "alice", "o-1"), 409, "coupon_unavailable"
    )
    before = await keyspace(raw_redis)
    released = await act(client, RELEASE, "alice", "o-1")
    assert released == {"order_id": "o-1", "coupon_id": coupon, "status": "locked"}
    assert await act(client, RELEASE, "alice", "o-1") == released
    assert_same_keyspace(before, await keyspace(raw_redis))
    assert (await order_view(client, "alice", "o-2"))["status"] == "locked"
    assert (await act(client, REDEEM, "alice", "o-2"))["status"] == "redeemed"
    assert await figures(client, activity) == {"locked": 0, "redeemed": 1, "redeemed_value": 1000}


async def test_a_redeem_after_the_deadline_succeeds_while_the_coupon_is_free_and_valid(
    client: AsyncTestClient[Any], raw_redis: Redis, settings: Settings
) -> None:
    activity, (coupon,) = await claim_pack(client, "alice")
    await lock(client, "alice", "o-1", coupon)
    await lapse(raw_redis, settings, "alice", "o-1")
    assert await act(client, REDEEM, "alice", "o-1") == {
        "order_id": "o-1",
        "coupon_id": coupon,
        "status": "redeemed",
    }
    item = await wallet_item(client, "alice", coupon)
    assert item["status"] == "redeemed" and item["order_id"] == "o-1"
    assert await figures(client, activity) == {"locked": 0, "redeemed": 1, "redeemed_value": 1000}
    assert await raw_redis.zscore(wallet_keys(settings, "alice").locks, coupon) is None


async def test_a_redeem_after_the_deadline_of_a_coupon_since_released_succeeds(
    client: AsyncTestClient[Any], raw_redis: Redis, settings: Settings
) -> None:
    """Another order took the lapsed coupon and let it go again: it is free, so the first order may pay."""
    activity, (coupon,) = await claim_pack(client, "alice")
    await lock(client, "alice", "o-1", coupon)
    await lapse(raw_redis, settings, "alice", "o-1")
    await lock(client, "alice", "o-2", coupon)
    await act(client, RELEASE, "alice", "o-2")
    assert (await act(client, REDEEM, "alice", "o-1"))["status"] == "redeemed"
    assert await figures(client, activity) == {"locked": 0, "redeemed": 1, "redeemed_value": 1000}


async def test_a_redeem_after_the_deadline_of_a_coupon_no_longer_valid_is_unavailable(
    client: AsyncTestClient[Any], raw_redis: Redis, settings: Settings
) -> None:
    coupon = await claim_one(client, "alice")
    await lock(client, "alice", "o-1", coupon)
    await lapse(raw_redis, settings, "alice", "o-1")
    await edit_record(raw_redis, settings, "alice", coupon, valid_until=int(time.time()) - 1)
    await refused_without_writing(
        raw_redis, try_act(client, REDEEM, "alice", "o-1"), 409, "coupon_unavailable"
    )
    assert (await wallet_item(client, "alice", coupon))["status"] == "expired"


async def test_a_redeem_after_the_deadline_of_a_coupon_another_order_used_is_unavailable(
    client: AsyncTestClient[Any], raw_redis: Redis, settings: Settings
) -> None:
    activity, (coupon,) = await claim_pack(client, "alice")
    await lock(client, "alice", "o-1", coupon)
    await lapse(raw_redis, settings, "alice", "o-1")
    await lock(client, "alice", "o-2", coupon)
    await act(client, REDEEM, "alice", "o-2")
    await refused_without_writing(
        raw_redis, try_act(client, REDEEM, "alice", "o-1"), 409, "coupon_unavailable"
    )
    assert await act(client, RELEASE, "alice", "o-1") == {
        "order_id": "o-1",
        "coupon_id": coupon,
        "status": "redeemed",
    }
    assert await figures(client, activity) == {"locked": 0, "redeemed": 1, "redeemed_value": 1000}


async def test_a_release_after_the_deadline_of_a_coupon_nobody_took_answers_available(
    client: AsyncTestClient[Any], raw_redis: Redis, settings: Settings
) -> None:
    activity, (coupon,) = await claim_pack(client, "alice")
    await lock(client, "alice", "o-1", coupon)
    await lapse(raw_redis, settings, "alice", "o-1")
    first = await act(client, RELEASE, "alice", "o-1")
    assert first == {"order_id": "o-1", "coupon_id": coupon, "status": "available"}
    assert await act(client, RELEASE, "alice", "o-1") == first
    assert (await wallet_item(client, "alice", coupon))["status"] == "available"
    assert await figures(client, activity) == {"locked": 0, "redeemed": 0, "redeemed_value": 0}
    assert await raw_redis.zscore(wallet_keys(settings, "alice").locks, coupon) is None


async def test_a_release_after_the_deadline_of_a_coupon_past_its_validity_answers_expired(
    client: AsyncTestClient[Any], raw_redis: Redis, settings: Settings
) -> None:
    coupon = await claim_one(client, "alice")
    await lock(client, "alice", "o-1", coupon)
    await lapse(raw_redis, settings, "alice", "o-1")
    await edit_record(raw_redis, settings, "alice", coupon, valid_until=int(time.time()) - 1)
    assert (await wallet_item(client, "alice", coupon))["status"] == "expired"
    assert await act(client, RELEASE, "alice", "o-1") == {
        "order_id": "o-1",
        "coupon_id": coupon,
        "status": "expired",
    }


async def test_after_the_sweeper_marks_a_lapsed_lock_redeem_and_release_answer_the_coupons_state(
    client: AsyncTestClient[Any], raw_redis: Redis, settings: Settings, runner: ScriptRunner
) -> None:
    """The worker's sweeper marks lapsed locks (order expired, coupon available, counter down); the answers are
    those of an unmarked lapsed lock: a release names the coupon's state, a redeem takes it while free and valid."""
    activity, (kept, lapsing) = await claim_pack(client, "alice", count=2)
    await lock(client, "alice", "o-kept", kept)
    await lock(client, "alice", "o-expired", lapsing)
    await lapse(raw_redis, settings, "alice", "o-kept")
    await lapse(raw_redis, settings, "alice", "o-expired")
    await edit_record(raw_redis, settings, "alice", lapsing, valid_until=int(time.time()) - 1)
    sweeper = LockSweeper(runner, KeySpace(settings.redis.wallet_buckets, settings.redis.code_buckets))
    assert await sweeper.sweep(now=int(time.time())) == 2
    assert await event_types(raw_redis, settings, "alice") == [
        "locked",
        "locked",
        "lock_expired",
        "lock_expired",
    ]
    assert await figures(client, activity) == {"locked": 0, "redeemed": 0, "redeemed_value": 0}
    assert (await order_view(client, "alice", "o-kept"))["status"] == "available"

    released = {"order_id": "o-expired", "coupon_id": lapsing, "status": "expired"}
    assert await act(client, RELEASE, "alice", "o-expired") == released
    await refused_without_writing(
        raw_redis, try_act(client, REDEEM, "alice", "o-expired"), 409, "coupon_unavailable"
    )
    assert await act(client, RELEASE, "alice", "o-kept") == {
        "order_id": "o-kept",
        "coupon_id": kept,
        "status": "available",
    }
    assert (await act(client, REDEEM, "alice", "o-kept"))["status"] == "redeemed"
    assert await figures(client, activity) == {"locked": 0, "redeemed": 1, "redeemed_value": 1000}


@pytest.fixture
async def short_lock_client(
    valkey: ValkeyServer, migrated: str, clean: None
) -> AsyncIterator[AsyncTestClient[Any]]:
    """The app with ``CLAIMGATE_LOCK_SECONDS=1``: a lock lapses within a second, for real."""
    short = load_settings(settings_env(valkey.url, migrated, lock_seconds="1"))
    assert short.checkout.lock_seconds == 1
    async with AsyncTestClient(app=create_app(short)) as test_client:
        yield test_client


async def past(deadline: int) -> None:
    """Wait until the clock reaches ``deadline`` (a lock's ``locked_until``): at most a second here."""
    await asyncio.sleep(max(0.0, deadline - time.time()) + 0.01)
    assert time.time() >= deadline


async def test_a_real_deadline_passing_frees_the_coupon(
    short_lock_client: AsyncTestClient[Any], raw_redis: Redis
) -> None:
    client = short_lock_client
    activity, (coupon,) = await claim_pack(client, "alice")
    first = await lock(client, "alice", "o-1", coupon)
    assert first["locked_until"] - int(time.time()) in (0, 1)
    await past(first["locked_until"])

    # Lapsed: the wallet and the order's view say available, and another order may lock it.
    assert (await wallet_item(client, "alice", coupon))["status"] == "available"
    assert (await order_view(client, "alice", "o-1"))["status"] == "available"
    second = await lock(client, "alice", "o-2", coupon)
    assert second["locked_until"] > first["locked_until"]
    # Within the second order's deadline the first order cannot pay with it; its release names the state.
    await refused_without_writing(
        raw_redis, try_act(client, REDEEM, "alice", "o-1"), 409, "coupon_unavailable"
    )
    assert (await act(client, RELEASE, "alice", "o-1"))["status"] == "locked"
    await past(second["locked_until"])

    # Both locks lapsed: the coupon is free and valid again, so the first order's payment takes it.
    assert (await act(client, REDEEM, "alice", "o-1"))["status"] == "redeemed"
    await refused_without_writing(
        raw_redis, try_act(client, REDEEM, "alice", "o-2"), 409, "coupon_unavailable"
    )
    assert await figures(client, activity) == {"locked": 0, "redeemed": 1, "redeemed_value": 1000}


# ---------------------------------------------------------------------------------------------------------
# Identity


async def test_a_user_token_may_not_name_a_user_on_any_checkout_route(
    client: AsyncTestClient[Any], raw_redis: Redis
) -> None:
    coupon = await claim_one(client, "alice")
    await lock(client, "alice", "o-1", coupon)
    free = await claim_one(client, "alice")
    for named in ("alice", "mallory"):
        body = {"order_id": "o-2", "coupon_id": free, "lines": CART, "user_id": named}
        await refused_without_writing(
            raw_redis,
            client.post(LOCK, json=body, headers=bearer("alice")),
            400,
            "invalid_request",
            "user_id",
        )
        for route in ORDER_ROUTES:
            reply = client.post(route, json={"order_id": "o-1", "user_id": named}, headers=bearer("alice"))
            await refused_without_writing(raw_redis, reply, 400, "invalid_request", "user_id")
        reply = client.get(f"/v1/checkout/orders/o-1?user_id={named}", headers=bearer("alice"))
        await refused_without_writing(raw_redis, reply, 400, "invalid_request", "user_id")


async def test_a_service_call_must_name_a_well_formed_user(
    client: AsyncTestClient[Any], raw_redis: Redis
) -> None:
    coupon = await claim_one(client, "alice")
    await lock(client, "alice", "o-1", coupon)
    free = await claim_one(client, "alice")
    for named in ({}, {"user_id": "a b"}, {"user_id": "alice/o-1"}, {"user_id": ""}):
        body = {"order_id": "o-2", "coupon_id": free, "lines": CART, **named}
        await refused_without_writing(
            raw_redis, client.post(LOCK, json=body, headers=SERVICE), 400, "invalid_request", "user_id"
        )
        for route in ORDER_ROUTES:
            reply = client.post(route, json={"order_id": "o-1", **named}, headers=SERVICE)
            await refused_without_writing(raw_redis, reply, 400, "invalid_request", "user_id")
    reply = client.get("/v1/checkout/orders/o-1", headers=SERVICE)
    await refused_without_writing(raw_redis, reply, 400, "invalid_request", "user_id")


async def test_the_order_service_acts_for_the_user_it_names_on_every_route(
    client: AsyncTestClient[Any], raw_redis: Redis, settings: Settings
) -> None:
    activity, (paid, cancelled) = await claim_pack(client, "alice", count=2)

    async def call(route: str, **body: Any) -> dict[str, Any]:
        reply = await client.post(route, json={**body, "user_id": "alice"}, headers=SERVICE)
        assert reply.status_code == 200, reply.text
        answer: dict[str, Any] = reply.json()
        return answer

    async def view(order_id: str) -> dict[str, Any]:
        reply = await client.get(f"/v1/checkout/orders/{order_id}?user_id=alice", headers=SERVICE)
        assert reply.status_code == 200, reply.text
        found: dict[str, Any] = reply.json()
        return found

    held = await call(LOCK, order_id="o-paid", coupon_id=paid, lines=CART)
    assert held["discount"] == 1000 and held["split"] == SPLIT_1000
    assert (await view("o-paid"))["status"] == "locked"
    assert await order_view(client, "alice", "o-paid") == await view("o-paid")  # the user sees the same
    assert await call(REDEEM, order_id="o-paid") == {
        "order_id": "o-paid",
        "coupon_id": paid,
        "status": "redeemed",
    }
    assert await call(REFUND, order_id="o-paid") == {
        "order_id": "o-paid",
        "coupon_id": paid,
        "status": "available",
        "returned": True,
    }
    assert (await view("o-paid"))["status"] == "available"
    await call(LOCK, order_id="o-cancelled", coupon_id=cancelled, lines=CART)
    assert await call(RELEASE, order_id="o-cancelled") == {
        "order_id": "o-cancelled",
        "coupon_id": cancelled,
        "status": "available",
    }
    assert await event_types(raw_redis, settings, "alice") == [
        "locked",
        "redeemed",
        "refunded",
        "locked",
        "released",
    ]
    assert await figures(client, activity) == {"locked": 0, "redeemed": 0, "redeemed_value": 0}
    # The service may act for any user, each in their own wallet.
    (bobs,) = (await claim_pack(client, "bob"))[1]
    body = {"order_id": "o-paid", "coupon_id": bobs, "lines": CART, "user_id": "bob"}
    reply = await client.post(LOCK, json=body, headers=SERVICE)
    assert reply.status_code == 200 and reply.json()["coupon_id"] == bobs, reply.text
    assert (await order_view(client, "bob", "o-paid"))["coupon_id"] == bobs


async def test_a_call_without_a_valid_credential_is_unauthorized(
    client: AsyncTestClient[Any], raw_redis: Redis
) -> None:
    coupon = await claim_one(client, "alice")
    await lock(client, "alice", "o-1", coupon)
    free = await claim_one(client, "alice")
    credentials: list[dict[str, str]] = [
        {},
        {"X-Service-Key": "not-the-key-0123456789"},
        {"X-Service-Key": ""},
        {"Authorization": "Bearer nope"},
    ]  # (a service key beside a user token, right or wrong, is invalid_request: tests/http/test_credentials.py)
    for headers in credentials:
        body = {"order_id": "o-2", "coupon_id": free, "lines": CART, "user_id": "alice"}
        await refused_without_writing(
            raw_redis, client.post(LOCK, json=body, headers=headers), 401, "unauthorized"
        )
        for route in ORDER_ROUTES:
            reply = client.post(route, json={"order_id": "o-1", "user_id": "alice"}, headers=headers)
            await refused_without_writing(raw_redis, reply, 401, "unauthorized")
        reply = client.get("/v1/checkout/orders/o-1?user_id=alice", headers=headers)
        await refused_without_writing(raw_redis, reply, 401, "unauthorized")
    assert (await order_view(client, "alice", "o-1"))["status"] == "locked"


async def test_a_user_cannot_see_or_act_on_another_users_order(
    client: AsyncTestClient[Any], raw_redis: Redis, settings: Settings
) -> None:
    coupon = await claim_one(client, "alice")
    await lock(client, "alice", "o-1", coupon)
    for bob in (user_in_bucket(settings, "alice", same=True), user_in_bucket(settings, "alice", same=False)):
        assert_refusal(await client.get("/v1/checkout/orders/o-1", headers=bearer(bob)), 404, "not_found")
        assert_refusal(
            await client.get(f"/v1/checkout/orders/o-1?user_id={bob}", headers=SERVICE), 404, "not_found"
        )
        for route in ORDER_ROUTES:
            await refused_without_writing(raw_redis, try_act(client, route, bob, "o-1"), 404, "not_found")
        # Order ids are the user's: bob's own "o-1" is another order altogether.
        bobs = await claim_one(client, bob)
        assert (await lock(client, bob, "o-1", bobs))["coupon_id"] == bobs
        assert (await act(client, REDEEM, bob, "o-1"))["coupon_id"] == bobs
    assert (await order_view(client, "alice", "o-1"))["status"] == "locked"
    assert (await act(client, RELEASE, "alice", "o-1"))["coupon_id"] == coupon


# ---------------------------------------------------------------------------------------------------------
# Bad bodies


def line(n: int, **fields: Any) -> dict[str, Any]:
    return {"sku": f"sku-{n}", "category": "food", "amount": 100, **fields}


LOCK_BAD_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("missing-order_id", {"coupon_id": "COUPON", "lines": [line(1)]}, "order_id"),
    ("missing-coupon_id", {"order_id": "o-9", "lines": [line(1)]}, "coupon_id"),
    ("missing-lines", {"order_id": "o-9", "coupon_id": "COUPON"}, "lines"),
    (
        "unknown-field",
        {"order_id": "o-9", "coupon_id": "COUPON", "lines": [line(1)], "colour": "red"},
        "colour",
    ),
    ("coupon_id-format", {"order_id": "o-9", "coupon_id": "not a coupon", "lines": [line(1)]}, "coupon_id"),
    ("coupon_id-slash", {"order_id": "o-9", "coupon_id": "a/b.1", "lines": [line(1)]}, "coupon_id"),
    ("coupon_id-empty", {"order_id": "o-9", "coupon_id": "", "lines": [line(1)]}, "coupon_id"),
    ("coupon_id-65", {"order_id": "o-9", "coupon_id": "c" * 65, "lines": [line(1)]}, "coupon_id"),
    ("coupon_id-number", {"order_id": "o-9", "coupon_id": 7, "lines": [line(1)]}, "coupon_id"),
    ("order_id-slash", {"order_id": "alice/o-9", "coupon_id": "COUPON", "lines": [line(1)]}, "order_id"),
    ("order_id-empty", {"order_id": "", "coupon_id": "COUPON", "lines": [line(1)]}, "order_id"),
    ("order_id-65", {"order_id": "o" * 65, "coupon_id": "COUPON", "lines": [line(1)]}, "order_id"),
    ("order_id-number", {"order_id": 9, "coupon_id": "COUPON", "lines": [line(1)]}, "order_id"),
    (
        "101-lines",
        {"order_id": "o-9", "coupon_id": "COUPON", "lines": [line(n) for n in range(101)]},
        "lines",
    ),
    ("no-lines", {"order_id": "o-9", "coupon_id": "COUPON", "lines": []}, "lines"),
    (
        "duplicate-skus",
        {"order_id": "o-9", "coupon_id": "COUPON", "lines": [line(1), line(2), line(1, amount=5)]},
        "lines",
    ),
    (
        "negative-amount",
        {"order_id": "o-9", "coupon_id": "COUPON", "lines": [line(1), line(2, amount=-1)]},
        "lines[1].amount",
    ),
    (
        "amount-over-10^12",
        {"order_id": "o-9", "coupon_id": "COUPON", "lines": [line(1, amount=10**12 + 1)]},
        "lines[0].amount",
    ),
    (
        "unknown-line-field",
        {"order_id": "o-9", "coupon_id": "COUPON", "lines": [line(1, price=3)]},
        "lines[0].price",
    ),
]


@pytest.mark.parametrize(
    ("body", "field"), [case[1:] for case in LOCK_BAD_BODIES], ids=[case[0] for case in LOCK_BAD_BODIES]
)
async def test_a_bad_lock_body_is_refused_naming_the_field(
    client: AsyncTestClient[Any], raw_redis: Redis, body: dict[str, Any], field: str
) -> None:
    coupon = await claim_one(client, "alice")  # a real, free coupon: only the body's shape can refuse
    body = {k: coupon if v == "COUPON" else v for k, v in body.items()}
    for headers, extra in ((bearer("alice"), {}), (SERVICE, {"user_id": "alice"})):
        reply = client.post(LOCK, json={**body, **extra}, headers=headers)
        await refused_without_writing(raw_redis, reply, 400, "invalid_request", field)


ORDER_BAD_BODIES: list[tuple[str, Any, str | None]] = [
    ("missing-order_id", {}, "order_id"),
    ("unknown-field", {"order_id": "o-1", "coupon_id": "x.1"}, "coupon_id"),
    ("order_id-slash", {"order_id": "a/o-1"}, "order_id"),
    ("order_id-space", {"order_id": "o 1"}, "order_id"),
    ("order_id-null", {"order_id": None}, "order_id"),
    ("not-an-object", ["o-1"], None),
]


@pytest.mark.parametrize("route", ORDER_ROUTES, ids=["redeem", "release", "refund"])
@pytest.mark.parametrize(
    ("body", "field"), [case[1:] for case in ORDER_BAD_BODIES], ids=[case[0] for case in ORDER_BAD_BODIES]
)
async def test_a_bad_order_body_is_refused_naming_the_field(
    client: AsyncTestClient[Any], raw_redis: Redis, route: str, body: Any, field: str | None
) -> None:
    coupon = await claim_one(client, "alice")
    await lock(client, "alice", "o-1", coupon)
    await refused_without_writing(
        raw_redis, client.post(route, json=body, headers=bearer("alice")), 400, "invalid_request", field
    )
    if isinstance(body, dict):
        reply = client.post(route, json={**body, "user_id": "alice"}, headers=SERVICE)
        await refused_without_writing(raw_redis, reply, 400, "invalid_request", field)


async def test_malformed_checkout_requests_are_refused(
    client: AsyncTestClient[Any], raw_redis: Redis
) -> None:
    coupon = await claim_one(client, "alice")
    await lock(client, "alice", "o-1", coupon)
    json_headers = {**bearer("alice"), "Content-Type": "application/json"}
    for route in (LOCK, *ORDER_ROUTES):
        await refused_without_writing(
            raw_redis, client.post(route, content=b"{not json", headers=json_headers), 400, "invalid_request"
        )
        text = {**bearer("alice"), "Content-Type": "text/plain"}
        await refused_without_writing(
            raw_redis,
            client.post(route, content=b'{"order_id": "o-1"}', headers=text),
            415,
            "invalid_request",
        )
        await refused_without_writing(
            raw_redis,
            client.post(f"{route}?user_id=alice", json={"order_id": "o-1"}, headers=SERVICE),
            400,
            "invalid_request",
            "user_id",
        )
        assert_refusal(await client.get(route, headers=bearer("alice")), 405, "invalid_request")
    huge = {"order_id": "o-1", "pad": "x" * 17_000}
    await refused_without_writing(
        raw_redis, client.post(REDEEM, json=huge, headers=bearer("alice")), 413, "invalid_request"
    )
    assert_refusal(
        await client.get("/v1/checkout/orders/o-1?colour=red", headers=bearer("alice")),
        400,
        "invalid_request",
        "colour",
    )


# ---------------------------------------------------------------------------------------------------------
# The activity's figures


async def test_activity_stats_follow_locks_redeems_releases_and_refunds(client: AsyncTestClient[Any]) -> None:
    activity, (one, two, three) = await claim_pack(client, "alice", count=3)
    bystander, (elsewhere,) = await claim_pack(client, "alice")
    assert await figures(client, activity) == {"locked": 0, "redeemed": 0, "redeemed_value": 0}

    await lock(client, "alice", "o-1", one)
    await lock(client, "alice", "o-2", two)
    assert (await lock(client, "alice", "o-3", three, SMALL_CART))["discount"] == 600
    assert await figures(client, activity) == {"locked": 3, "redeemed": 0, "redeemed_value": 0}
    await lock(client, "alice", "o-1", one)  # a repeat counts nothing
    assert await figures(client, activity) == {"locked": 3, "redeemed": 0, "redeemed_value": 0}

    await act(client, REDEEM, "alice", "o-1")
    await act(client, REDEEM, "alice", "o-1")
    assert await figures(client, activity) == {"locked": 2, "redeemed": 1, "redeemed_value": 1000}
    await act(client, RELEASE, "alice", "o-2")
    await act(client, RELEASE, "alice", "o-2")
    assert await figures(client, activity) == {"locked": 1, "redeemed": 1, "redeemed_value": 1000}
    await act(client, REDEEM, "alice", "o-3")
    assert await figures(client, activity) == {"locked": 0, "redeemed": 2, "redeemed_value": 1600}
    await act(client, REFUND, "alice", "o-1")
    await act(client, REFUND, "alice", "o-1")
    assert await figures(client, activity) == {"locked": 0, "redeemed": 1, "redeemed_value": 600}

    # Another activity's coupon moves only its own figures.
    assert await figures(client, bystander) == {"locked": 0, "redeemed": 0, "redeemed_value": 0}
    await lock(client, "alice", "o-4", elsewhere)
    assert await figures(client, bystander) == {"locked": 1, "redeemed": 0, "redeemed_value": 0}
    assert await figures(client, activity) == {"locked": 0, "redeemed": 1, "redeemed_value": 600}
