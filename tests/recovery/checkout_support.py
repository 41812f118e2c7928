"""A ledger with checkout and codes in it, made the way the gateway makes it (CheckoutService, LockSweeper,
CodeService, then the worker), for the reconcile and restore tests of wallet buckets, code buckets and an
activity's code batches."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from gateway.catalog.campaign import Activity
from gateway.checkout.quote import Line
from gateway.checkout.service import CheckoutService, LockSweeper
from gateway.checkout.terms import TermsCache
from gateway.codes import format as code_format
from gateway.codes.service import CodeService
from gateway.events import ClaimAnswer
from gateway.keys import ActivityKeys, CodeKeys, WalletKeys
from gateway.outcomes import DomainError, Outcome
from gateway.scripts.runner import RedisClient
from gateway.tokens import UserIdentity
from tests.recovery.support import KEYS, OPERATOR, new_activity, redis_state, text
from worker.consumer import Consumer

LOCK_SECONDS = 600
HASH_KEY = b"recovery-tests-code-hash-key-0123"
LINES = [Line(sku="s1", category="food", amount=3000), Line(sku="s2", category="toys", amount=1000)]
DISCOUNT = 100  # new_activity's template: cash, 100 off


def checkout_service(consumer: Consumer) -> CheckoutService:
    return CheckoutService(consumer.runner, KEYS, TermsCache(consumer.pool), LOCK_SECONDS)


def code_service(consumer: Consumer) -> CodeService:
    return CodeService(
        consumer.runner,
        KEYS,
        consumer.pool,
        consumer.claims,
        HASH_KEY,
        consumer.settings.claim.idempotency_ttl_seconds,
    )


@dataclass
class Shop:
    """What ``build_shop`` made, for the assertions."""

    activity: Activity
    keys: ActivityKeys
    coupons: dict[str, tuple[str, str]] = field(default_factory=dict)  # user -> its two coupon ids
    batch_id: str = ""
    codes: list[str] = field(default_factory=list)  # the batch's codes as shown
    answers: dict[str, str] = field(default_factory=dict)  # code redeemer -> first answer

    def wallet(self, user: str) -> WalletKeys:
        return KEYS.wallet(user)


async def code_bucket_of(shop: Shop, consumer: Consumer, code_index: int) -> tuple[CodeKeys, str]:
    """The bucket and keyed hash of one of the shop's codes (as the ledger recorded it)."""
    plain = code_format.canonical(shop.codes[code_index])
    assert plain is not None
    code_hash = code_format.code_hash(HASH_KEY, plain)
    assert await consumer.pool.fetchval("SELECT count(*) FROM codes WHERE code_hash = $1", code_hash) == 1
    return KEYS.code(code_hash), code_hash


async def build_shop(consumer: Consumer) -> Shop:
    """An activity (stock 20, packs of two cash coupons), three buyers and their orders, a batch of four codes
    and two of them redeemed, a batch refused for want of stock. Nothing is drained.

    - buyer1: o1 locked and redeemed; o2 locked (a live lock, kept);
    - buyer2: o3 locked, redeemed and refunded (the coupon returned); o4 locked and released;
    - buyer3: o5 locked 700 s ago, lapsed, and the sweeper expired it; o6 locked, lapsed, then taken over by o7
      and redeemed (o6 stays ``locked`` with its deadline past);
    - codes: coder1 redeems the first (with an Idempotency-Key), coder2 the second.
    """
    now = int(time.time())
    activity = await new_activity(consumer, stock=20, per_user_limit=1, starts_at=now - 2000)
    shop = Shop(activity, KEYS.activity(activity.id))
    for n, user in enumerate(("buyer1", "buyer2", "buyer3"), start=1):
        claimed = await consumer.claims.claim(
            activity.id, UserIdentity(user, f"dev{n}"), now=now - 1000, idempotency_key=None
        )
        answer = msgspec.json.decode(claimed.answer, type=ClaimAnswer)
        shop.coupons[user] = (answer.coupons[0].coupon_id, answer.coupons[1].coupon_id)
    checkout = checkout_service(consumer)
    b1, b2, b3 = (shop.coupons[u] for u in ("buyer1", "buyer2", "buyer3"))
    await checkout.lock("buyer1", "o1", b1[0], LINES, now=now)
    await checkout.redeem("buyer1", "o1", now=now)
    await checkout.lock("buyer1", "o2", b1[1], LINES, now=now)
    await checkout.lock("buyer2", "o3", b2[0], LINES, now=now)
    await checkout.redeem("buyer2", "o3", now=now)
    refund = json.loads(await checkout.refund("buyer2", "o3", now=now))
    assert refund["returned"] is True
    await checkout.lock("buyer2", "o4", b2[1], LINES, now=now)
    await checkout.release("buyer2", "o4", now=now)
    await checkout.lock("buyer3", "o5", b3[0], LINES, now=now - 700)
    assert await LockSweeper(consumer.runner, KEYS).sweep(now=now) == 1
    await checkout.lock("buyer3", "o6", b3[1], LINES, now=now - 700)
    await checkout.lock("buyer3", "o7", b3[1], LINES, now=now)  # o6's lock had lapsed
    await checkout.redeem("buyer3", "o7", now=now)

    codes = code_service(consumer)
    hot = await hot_config(consumer, shop.keys)
    batch = await codes.make_batch(activity.id, hot, 4, OPERATOR, now=now)
    shop.batch_id, shop.codes = batch.batch_id, batch.codes
    keyed = await codes.redeem(
        UserIdentity("coder1", "cdev1"), batch.codes[0], now=now, idempotency_key="ck1", blocked=False
    )
    plain = await codes.redeem(
        UserIdentity("coder2", "cdev2"), batch.codes[1], now=now, idempotency_key=None, blocked=False
    )
    shop.answers = {"coder1": keyed.answer, "coder2": plain.answer}
    try:
        await codes.make_batch(activity.id, hot, 100, OPERATOR, now=now)
    except DomainError as refused:
        assert refused.outcome is Outcome.STATE_CONFLICT
    else:
        raise AssertionError("a batch larger than the stock left was made")
    return shop


async def hot_config(consumer: Consumer, keys: ActivityKeys) -> dict[str, str]:
    """The activity's config as Redis holds it (what the admin route hands make_batch)."""
    held = await consumer.client.hgetall(keys.config)
    return {text(name): text(value) for name, value in held.items()}


def decoded(value: Any) -> Any:
    """A hash's JSON records decoded (key order and number spelling are the encoder's, not the state's)."""
    if isinstance(value, dict):
        return {k: json.loads(v) if isinstance(v, str) and v.startswith("{") else v for k, v in value.items()}
    return value


async def full_state(client: RedisClient) -> dict[str, tuple[str, Any, int]]:
    """``redis_state`` with every hash's JSON records decoded, and without the failed code attempts (rate-limit
    state that restore starts afresh by design)."""
    return {
        key: (kind, decoded(value), expires)
        for key, (kind, value, expires) in (await redis_state(client)).items()
        if ":fails:" not in key
    }
