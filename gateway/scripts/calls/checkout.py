"""Calls of the wallet and checkout scripts: ``wallet_page``, ``order_view``, ``lock``, ``redeem``, ``release``,
``refund``, ``sweep_locks``, ``sweep_expired``."""

from __future__ import annotations

from typing import NamedTuple

from gateway.keys import WalletKeys
from gateway.scripts.calls import Reply, Runs


class WalletPageKeys(NamedTuple):
    coupons: str
    index: str  # type: ignore[assignment]  # the header's name; it hides tuple.index, which nothing here calls

    @classmethod
    def of(cls, wallet: WalletKeys, user_id: str) -> WalletPageKeys:
        return cls(wallet.coupons, wallet.user_index(user_id))


def wallet_page(
    runner: Runs[Reply],
    keys: WalletPageKeys,
    *,
    now: int,
    cursor: str,
    limit: int,
    status: str,
    vouched: bool = False,
) -> Reply:
    """``cursor`` and ``status``: "" for the first page and for every status; ``vouched``: the cursor is one of
    the user's coupons the ledger holds (no longer in Redis)."""
    return runner.run("wallet_page", keys, [now, cursor, limit, status, "1" if vouched else ""])


class OrderViewKeys(NamedTuple):
    coupons: str
    orders: str

    @classmethod
    def of(cls, wallet: WalletKeys) -> OrderViewKeys:
        return cls(wallet.coupons, wallet.orders)


def order_view(runner: Runs[Reply], keys: OrderViewKeys, *, user_id: str, order_id: str) -> Reply:
    return runner.run("order_view", keys, [user_id, order_id])


class CheckoutKeys(NamedTuple):
    """KEYS of ``lock``, ``redeem``, ``release`` and ``sweep_locks``."""

    coupons: str
    orders: str
    locks: str
    counters: str
    done: str
    seq: str
    events: str

    @classmethod
    def of(cls, wallet: WalletKeys) -> CheckoutKeys:
        return cls(
            wallet.coupons,
            wallet.orders,
            wallet.locks,
            wallet.counters,
            wallet.finished_orders,
            wallet.seq,
            wallet.events,
        )


def lock(
    runner: Runs[Reply],
    keys: CheckoutKeys,
    *,
    now: int,
    event_id: str,
    user_id: str,
    order_id: str,
    coupon_id: str,
    discount: int | None,
    split: str | bytes,
    lock_seconds: int,
) -> Reply:
    """``discount``: None when the coupon does not apply to the order's lines; ``split``: JSON [{sku, amount}]."""
    return runner.run(
        "lock",
        keys,
        [
            now,
            event_id,
            user_id,
            order_id,
            coupon_id,
            "" if discount is None else discount,
            split,
            lock_seconds,
        ],
    )


def redeem(
    runner: Runs[Reply], keys: CheckoutKeys, *, now: int, event_id: str, user_id: str, order_id: str
) -> Reply:
    return runner.run("redeem", keys, [now, event_id, user_id, order_id])


def release(
    runner: Runs[Reply], keys: CheckoutKeys, *, now: int, event_id: str, user_id: str, order_id: str
) -> Reply:
    return runner.run("release", keys, [now, event_id, user_id, order_id])


class RefundKeys(NamedTuple):
    """A refund touches no lock (a redeemed coupon holds none)."""

    coupons: str
    orders: str
    counters: str
    done: str
    seq: str
    events: str

    @classmethod
    def of(cls, wallet: WalletKeys) -> RefundKeys:
        return cls(
            wallet.coupons, wallet.orders, wallet.counters, wallet.finished_orders, wallet.seq, wallet.events
        )


def refund(
    runner: Runs[Reply], keys: RefundKeys, *, now: int, event_id: str, user_id: str, order_id: str
) -> Reply:
    return runner.run("refund", keys, [now, event_id, user_id, order_id])


def sweep_locks(runner: Runs[Reply], keys: CheckoutKeys, *, now: int, event_id: str, limit: int) -> Reply:
    return runner.run("sweep_locks", keys, [now, event_id, limit])


class RetainOrdersKeys(NamedTuple):
    orders: str
    done: str
    seq: str
    events: str

    @classmethod
    def of(cls, wallet: WalletKeys) -> RetainOrdersKeys:
        return cls(wallet.orders, wallet.finished_orders, wallet.seq, wallet.events)


def retain_orders(
    runner: Runs[Reply], keys: RetainOrdersKeys, *, now: int, event_id: str, cutoff: int, limit: int
) -> Reply:
    """Orders finished at or before ``cutoff`` (now - the retention) leave Redis."""
    return runner.run("retain_orders", keys, [now, event_id, cutoff, limit])


class RetainCouponsKeys(NamedTuple):
    coupons: str
    finished: str
    done: str
    index: str  # type: ignore[assignment]  # the header's name; it hides tuple.index, which nothing here calls
    seq: str
    events: str

    @classmethod
    def of(cls, wallet: WalletKeys, user_id: str) -> RetainCouponsKeys:
        return cls(
            wallet.coupons,
            wallet.finished,
            wallet.finished_orders,
            wallet.user_index(user_id),
            wallet.seq,
            wallet.events,
        )


def retain_coupons(
    runner: Runs[Reply],
    keys: RetainCouponsKeys,
    *,
    now: int,
    event_id: str,
    cutoff: int,
    user_id: str,
    coupon_ids: str,
) -> Reply:
    """The user's coupons (``coupon_ids``, a JSON array) final at or before ``cutoff`` leave Redis (each checked
    again in the script)."""
    return runner.run("retain_coupons", keys, [now, event_id, cutoff, user_id, coupon_ids])


class ExpiryKeys(NamedTuple):
    """KEYS of ``sweep_expired``."""

    coupons: str
    expiring: str
    finished: str
    seq: str
    events: str

    @classmethod
    def of(cls, wallet: WalletKeys) -> ExpiryKeys:
        return cls(wallet.coupons, wallet.expiring, wallet.finished, wallet.seq, wallet.events)


def sweep_expired(runner: Runs[Reply], keys: ExpiryKeys, *, now: int, limit: int) -> Reply:
    return runner.run("sweep_expired", keys, [now, limit])
