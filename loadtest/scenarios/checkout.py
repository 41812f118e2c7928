"""The order flow with user tokens: a coupon, quote, lock, then redeem (some refunded) or release."""

from __future__ import annotations

import random
import secrets
from typing import Any

from locust import FastHttpUser, between, task

from loadtest.scenarios.admin import user_headers
from loadtest.scenarios.config import REFUND_SHARE, RELEASE_SHARE
from loadtest.scenarios.outcomes import CREATED, OK, OUTCOMES, Expected, settle
from loadtest.scenarios.plan import Shopper, current


def cart() -> list[dict[str, Any]]:
    """1-3 lines; the first always in the coupon's scope and over its threshold (20.00)."""
    lines: list[dict[str, Any]] = [
        {
            "sku": "sku-g1",
            "category": random.choice(("grocery", "fashion")),
            "amount": random.randint(2000, 20000),
        }
    ]
    for i in range(random.randint(0, 2)):
        lines.append({"sku": f"sku-x{i}", "category": "books", "amount": random.randint(100, 8000)})
    return lines


class CheckoutUser(FastHttpUser):
    """The order flow with user tokens: a coupon (claimed when the shopper holds none available), quote, lock,
    then redeem (a share of them refunded afterwards) or release. Each iteration takes a shopper no other
    virtual user holds, so runs with more virtual users than LOADTEST_USERS shoppers mint extra ones."""

    wait_time = between(0.1, 0.5)

    def _call(
        self, path: str, body: dict[str, Any], headers: dict[str, str], name: str, expected: Expected
    ) -> Any:
        with self.client.post(path, json=body, headers=headers, name=name, catch_response=True) as reply:
            if settle(reply, name, expected):
                return reply.json()
        return None

    @task
    def order(self) -> None:
        plan = current()
        if plan.shoppers:
            shopper = plan.shoppers.popleft()
        else:
            shopper = Shopper(user_headers(f"{plan.tag}-shop-x{secrets.token_hex(4)}", 1)[0])
        try:
            self._order(shopper)
        finally:
            plan.shoppers.append(shopper)

    def _order(self, shopper: Shopper) -> None:
        plan, headers = current(), shopper.headers
        if not shopper.has_coupon:
            claimed = self._call(
                f"/v1/activities/{plan.checkout_activity}/claim",
                {"channel": "checkout"},
                headers,
                "checkout claim",
                CREATED,
            )
            if claimed is None:
                return
            shopper.has_coupon = True
        lines = cart()
        quote = self._call("/v1/checkout/quote", {"lines": lines}, headers, "quote", OK)
        if quote is None:
            return
        if not quote["usable"]:
            OUTCOMES["quote: nothing usable"] += 1
            shopper.has_coupon = False
            return
        order_id = f"{plan.tag}-o-{secrets.token_hex(8)}"
        coupon_id = quote["usable"][0]["coupon_id"]
        body = {"order_id": order_id, "coupon_id": coupon_id, "lines": lines}
        if self._call("/v1/checkout/lock", body, headers, "lock", OK) is None:
            return
        shopper.has_coupon = False
        order = {"order_id": order_id}
        if random.random() < RELEASE_SHARE:
            shopper.has_coupon = self._call("/v1/checkout/release", order, headers, "release", OK) is not None
            return
        if self._call("/v1/checkout/redeem", order, headers, "redeem", OK) is None:
            return
        if random.random() < REFUND_SHARE:
            refund = self._call("/v1/checkout/refund", order, headers, "refund", OK)
            shopper.has_coupon = bool(refund and refund["returned"])
