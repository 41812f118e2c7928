"""One order's whole path over HTTP: quote, lock, the order's view, redeem, refund; then the ledger."""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient

from tests.helpers import bearer, create_template
from tests.http.test_quote import CART, claim


async def test_lock_redeem_refund(client: AsyncTestClient[Any]) -> None:
    template = await create_template(client, amount_off=1000)
    (coupon,) = await claim(client, "alice", template["id"])
    lock = await client.post(
        "/v1/checkout/lock",
        json={"order_id": "o-1", "coupon_id": coupon, "lines": CART},
        headers=bearer("alice"),
    )
    assert lock.status_code == 200, lock.text
    body = lock.json()
    assert body["discount"] == 1000 and sum(s["amount"] for s in body["split"]) == 1000
    again = await client.post(
        "/v1/checkout/lock",
        json={"order_id": "o-1", "coupon_id": coupon, "lines": CART},
        headers=bearer("alice"),
    )
    assert again.json() == body
    view = await client.get("/v1/checkout/orders/o-1", headers=bearer("alice"))
    assert view.json() == {
        "order_id": "o-1",
        "coupon_id": coupon,
        "status": "locked",
        "discount": 1000,
        "locked_until": body["locked_until"],
    }
    redeem = await client.post("/v1/checkout/redeem", json={"order_id": "o-1"}, headers=bearer("alice"))
    assert redeem.json() == {"order_id": "o-1", "coupon_id": coupon, "status": "redeemed"}
    refund = await client.post("/v1/checkout/refund", json={"order_id": "o-1"}, headers=bearer("alice"))
    assert refund.json() == {"order_id": "o-1", "coupon_id": coupon, "status": "available", "returned": True}
