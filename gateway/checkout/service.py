"""Checkout: lock a coupon to an order, redeem, release, refund, and an order's view; one ``{w:n}`` script
each (a user's coupons and orders share one slot, so "one coupon to one order" is atomic).

Lock reads the coupon's record first (one HGET) for its template: the discount comes from the template's
terms, which live in Postgres and the process's cache, not in Redis. The script then judges the coupon's state
and the order atomically; the read only picks the terms.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from gateway.checkout.quote import Line, split, worth
from gateway.checkout.terms import TermsCache
from gateway.events import Share
from gateway.ids import new_id
from gateway.keys import KeySpace, WalletKeys
from gateway.outcomes import DomainError, Outcome
from gateway.scripts.calls import checkout as calls
from gateway.scripts.runner import RedisClient, ScriptRunner

# What the order's view shows of its coupon: held by the order (locked, redeemed), else free as far as the
# order is concerned (released, its lock lapsed, refunded and returned).
ORDER_VIEW_STATUS = {
    "locked": "locked",
    "redeemed": "redeemed",
    "released": "available",
    "expired": "available",
}


class StoredCoupon(msgspec.Struct):
    user: str
    template: str
    status: str
    order: str | None = None
    locked_until: int | None = None


class StoredOrder(msgspec.Struct):
    coupon: str
    status: str  # locked, redeemed, released, refunded, expired
    discount: int
    locked_until: int | None = None
    returned: bool | None = None


class OrderView(msgspec.Struct, omit_defaults=True):
    order_id: str
    coupon_id: str
    status: str
    discount: int
    locked_until: int | None = None


def order_view(order_id: str, order: StoredOrder, coupon: StoredCoupon, *, now: int) -> OrderView:
    if order.status == "refunded":
        status = "available" if order.returned else "redeemed"
    elif order.status == "locked":
        held = coupon.status == "locked" and coupon.order == order_id and (coupon.locked_until or 0) > now
        status = "locked" if held else "available"
    else:
        status = ORDER_VIEW_STATUS[order.status]
    until = coupon.locked_until if status == "locked" else None
    return OrderView(order_id, order.coupon, status, order.discount, until)


def answer_of(reply: list[Any]) -> str:
    """A checkout script's answer JSON (encoded once, by the script), or its refusal raised."""
    outcome = Outcome(reply[0])
    if outcome not in (Outcome.OK, Outcome.REPLAY):
        raise DomainError(outcome)
    answer: str = reply[1]
    return answer


class CheckoutService:
    def __init__(
        self, runner: ScriptRunner, keyspace: KeySpace, terms: TermsCache, lock_seconds: int
    ) -> None:
        self.runner = runner
        self.keyspace = keyspace
        self.terms = terms
        self.lock_seconds = lock_seconds

    async def lock(self, user_id: str, order_id: str, coupon_id: str, lines: list[Line], *, now: int) -> str:
        wallet = self.keyspace.wallet(user_id)
        raw = await self.runner.hget(wallet.coupons, coupon_id)
        if raw is None:
            raise DomainError(Outcome.NOT_FOUND, "No such coupon in this wallet.")
        template = msgspec.json.decode(raw, type=StoredCoupon).template
        terms = (await self.terms.of({template})).get(template)
        discount = worth(terms, lines) if terms is not None else None
        if terms is None or discount is None or not any(terms.eligible(line) for line in lines):
            given, shares = None, b"[]"
        else:
            given = discount
            shares = msgspec.json.encode(
                [Share(line.sku, s) for line, s in zip(lines, split(terms, lines, discount), strict=True)]
            )
        reply = await calls.lock(
            self.runner,
            calls.CheckoutKeys.of(wallet),
            now=now,
            event_id=new_id(),
            user_id=user_id,
            order_id=order_id,
            coupon_id=coupon_id,
            discount=given,
            split=shares,
            lock_seconds=self.lock_seconds,
        )
        return answer_of(reply)

    async def redeem(self, user_id: str, order_id: str, *, now: int) -> str:
        keys = calls.CheckoutKeys.of(self.keyspace.wallet(user_id))
        return answer_of(
            await calls.redeem(
                self.runner, keys, now=now, event_id=new_id(), user_id=user_id, order_id=order_id
            )
        )

    async def release(self, user_id: str, order_id: str, *, now: int) -> str:
        keys = calls.CheckoutKeys.of(self.keyspace.wallet(user_id))
        return answer_of(
            await calls.release(
                self.runner, keys, now=now, event_id=new_id(), user_id=user_id, order_id=order_id
            )
        )

    async def refund(self, user_id: str, order_id: str, *, now: int) -> str:
        keys = calls.RefundKeys.of(self.keyspace.wallet(user_id))
        return answer_of(
            await calls.refund(
                self.runner, keys, now=now, event_id=new_id(), user_id=user_id, order_id=order_id
            )
        )

    async def order(self, user_id: str, order_id: str, *, now: int) -> OrderView:
        keys = calls.OrderViewKeys.of(self.keyspace.wallet(user_id))
        reply = await calls.order_view(self.runner, keys, user_id=user_id, order_id=order_id)
        if reply[0] != Outcome.OK:
            raise DomainError(Outcome.NOT_FOUND, "No coupon is locked to this order.")
        order = msgspec.json.decode(reply[1], type=StoredOrder)
        coupon = msgspec.json.decode(reply[2], type=StoredCoupon)
        return order_view(order_id, order, coupon, now=now)


async def every_bucket(
    keyspace: KeySpace, batch: int, one_pass: Callable[[WalletKeys], Awaitable[list[Any]]]
) -> int:
    """A sweep script's passes over every wallet bucket, each bucket until a pass saw fewer than ``batch`` due
    (the scripts reply ``ok changed seen``); what the passes changed in all."""
    changed = 0
    for bucket in range(keyspace.wallet_buckets):
        wallet = keyspace.wallet_of_bucket(bucket)
        while True:
            reply = await one_pass(wallet)
            changed += int(reply[1])
            if int(reply[2]) < batch:
                break
    return changed


class LockSweeper:
    """Marks lapsed locks in every wallet bucket (``sweep_locks``), so the ledger records ``lock_expired``."""

    def __init__(self, runner: ScriptRunner, keyspace: KeySpace, batch: int = 500) -> None:
        self.runner = runner
        self.keyspace = keyspace
        self.batch = batch

    async def sweep(self, *, now: int) -> int:
        return await every_bucket(
            self.keyspace,
            self.batch,
            lambda wallet: calls.sweep_locks(
                self.runner, calls.CheckoutKeys.of(wallet), now=now, event_id=new_id(), limit=self.batch
            ),
        )


class ExpirySweeper:
    """Records coupons past their validity in every wallet bucket (``sweep_expired``): an available one becomes
    ``expired`` (the ledger's event), a final one moves to the bucket's finished index. Run after the lock sweep,
    so a lapsed lock is recorded first."""

    def __init__(self, runner: ScriptRunner, keyspace: KeySpace, batch: int = 500) -> None:
        self.runner = runner
        self.keyspace = keyspace
        self.batch = batch

    async def sweep(self, *, now: int) -> int:
        return await every_bucket(
            self.keyspace,
            self.batch,
            lambda wallet: calls.sweep_expired(
                self.runner, calls.ExpiryKeys.of(wallet), now=now, limit=self.batch
            ),
        )


class CheckoutFigures(msgspec.Struct):
    locked: int = 0  # coupons locked (a lapsed lock counts until the sweeper or a script marks it)
    redeemed: int = 0
    redeemed_value: int = 0  # the discounts given, in cents


async def checkout_figures(client: RedisClient, keyspace: KeySpace, activity_id: str) -> CheckoutFigures:
    """An activity's checkout figures, summed over every wallet bucket's counters."""
    fields = [f"{activity_id}|locked", f"{activity_id}|redeemed", f"{activity_id}|redeemed_value"]
    pipe = client.pipeline(transaction=False)
    for bucket in range(keyspace.wallet_buckets):
        pipe.hmget(keyspace.wallet_of_bucket(bucket).counters, fields)
    totals = [0, 0, 0]
    for values in await pipe.execute():
        for i, value in enumerate(values):
            totals[i] += int(value or 0)
    return CheckoutFigures(*totals)
