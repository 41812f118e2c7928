"""Which credential each user route takes (product.md, "Identity"): a request carrying both a user token and a
service key is invalid_request on every route that takes either, whatever either is worth, and does nothing;
the order service's key reads a user's wallet and acts on checkout, and cannot claim or redeem a code."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from gateway.http.openapi import SERVICE_KEY as SERVICE_SCHEME
from gateway.http.openapi import USER_TOKEN, contracts
from tests.conftest import SERVICE_KEY
from tests.helpers import bearer, create_activity
from tests.http.support import assert_refusal, assert_same_keyspace, claim_url, keyspace, stock_left

SERVICE = {"X-Service-Key": SERVICE_KEY}
WRONG_SERVICE = {"X-Service-Key": "not-a-service-key-0123456789"}
CART = [{"sku": "apple", "category": "food", "amount": 2_000}]

# Every route that takes a user token, and which of them also take the service key.
USER_ONLY = {("post", "/v1/activities/{activity_id}/claim"), ("post", "/v1/codes/redeem")}
USER_OR_SERVICE = {
    ("get", "/v1/coupons"),
    ("post", "/v1/checkout/quote"),
    ("post", "/v1/checkout/lock"),
    ("post", "/v1/checkout/redeem"),
    ("post", "/v1/checkout/release"),
    ("post", "/v1/checkout/refund"),
    ("get", "/v1/checkout/orders/{order_id}"),
}


def test_the_routes_here_are_every_route_a_user_token_or_the_service_key_takes(
    client: AsyncTestClient[Any],
) -> None:
    taken = {(method, path): set(c.callers) for path, method, _, c in contracts(client.app)}
    assert {route for route, callers in taken.items() if USER_TOKEN in callers} == USER_ONLY | USER_OR_SERVICE
    assert {route for route, callers in taken.items() if SERVICE_SCHEME in callers} == USER_OR_SERVICE


async def requests(
    client: AsyncTestClient[Any], activity_id: str, coupon_id: str
) -> list[tuple[str, str, Any]]:
    """(method, url, JSON body) of a request each route would take from alice's token or for her from the
    service (``user_id`` added by the caller for the service), on a real activity, coupon and order."""
    return [
        ("POST", claim_url(activity_id), None),
        ("POST", "/v1/codes/redeem", {"code": "0000-0000-00000"}),
        ("GET", "/v1/coupons", None),
        ("POST", "/v1/checkout/quote", {"lines": CART}),
        ("POST", "/v1/checkout/lock", {"order_id": "o-2", "coupon_id": coupon_id, "lines": CART}),
        ("POST", "/v1/checkout/redeem", {"order_id": "o-1"}),
        ("POST", "/v1/checkout/release", {"order_id": "o-1"}),
        ("POST", "/v1/checkout/refund", {"order_id": "o-1"}),
        ("GET", "/v1/checkout/orders/o-1", None),
    ]


def for_service(method: str, url: str, body: Any) -> tuple[str, Any]:
    """The same request as the service makes it: ``user_id`` in the body, or in the query of a read."""
    if method == "GET":
        return f"{url}?user_id=alice", body
    return url, {**(body or {}), "user_id": "alice"}


@pytest.mark.parametrize(
    ("token", "key"),
    [
        (bearer("alice"), SERVICE),
        (bearer("alice"), WRONG_SERVICE),
        ({"Authorization": "Bearer not-a-token"}, SERVICE),
        ({"Authorization": "Basic YWxpY2U6eA=="}, SERVICE),
    ],
    ids=["both-valid", "wrong-key", "bad-token", "other-scheme"],
)
async def test_a_user_token_and_a_service_key_together_are_invalid_request_and_do_nothing(
    client: AsyncTestClient[Any], raw_redis: Redis, token: dict[str, str], key: dict[str, str]
) -> None:
    activity = await create_activity(client, per_user_limit=5)
    claimed = await client.post(claim_url(activity["id"]), headers=bearer("alice"))
    coupon_id = claimed.json()["coupons"][0]["coupon_id"]
    order = {"order_id": "o-1", "coupon_id": coupon_id, "lines": CART}
    assert (await client.post("/v1/checkout/lock", json=order, headers=bearer("alice"))).status_code == 200
    left = await stock_left(client, activity["id"])
    before = await keyspace(raw_redis)
    for method, url, body in await requests(client, activity["id"], coupon_id):
        for url_, body_ in (
            (url, body),
            for_service(method, url, body),
        ):  # as a user sends it, as the service
            reply = await client.request(method, url_, json=body_, headers={**token, **key})
            assert_refusal(reply, 400, "invalid_request")
            assert "not both" in reply.json()["message"], (method, url_, reply.text)
    assert_same_keyspace(before, await keyspace(raw_redis))
    assert await stock_left(client, activity["id"]) == left


async def test_the_service_key_reads_a_wallet_and_cannot_claim_or_redeem_a_code(
    client: AsyncTestClient[Any], raw_redis: Redis
) -> None:
    """product.md: the order service may read a user's wallet (GET /v1/coupons?user_id=); it cannot claim or
    redeem codes. Without a user token those routes are unauthorized (401, the contract's shape), with or
    without a user_id, and nothing is taken."""
    activity = await create_activity(client)
    claimed = await client.post(claim_url(activity["id"]), headers=bearer("alice"))
    [coupon] = claimed.json()["coupons"]
    wallet = await client.get("/v1/coupons?user_id=alice", headers=SERVICE)
    assert wallet.status_code == 200, wallet.text
    assert [c["coupon_id"] for c in wallet.json()["items"]] == [coupon["coupon_id"]]

    left = await stock_left(client, activity["id"])
    before = await keyspace(raw_redis)
    for url, body in (
        (claim_url(activity["id"]), None),
        (claim_url(activity["id"]), {"user_id": "bob"}),
        (f"{claim_url(activity['id'])}?user_id=bob", None),
        ("/v1/codes/redeem", {"code": "0000-0000-00000"}),
        ("/v1/codes/redeem", {"code": "0000-0000-00000", "user_id": "bob"}),
    ):
        assert_refusal(await client.post(url, json=body, headers=SERVICE), 401, "unauthorized")
    assert_same_keyspace(before, await keyspace(raw_redis))
    assert await stock_left(client, activity["id"]) == left
