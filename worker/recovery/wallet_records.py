"""A wallet bucket's records as the scripts keep them in Redis, made from the ledger's rows: what reconcile compares
and restore writes back."""

from __future__ import annotations

from typing import Any

import asyncpg


def coupon_record(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """A coupon as deliver and the checkout scripts keep it in the wallet's hash: the order and discount while
    locked or redeemed, the deadline while locked (the sink keeps them only then)."""
    record = {
        "user": row["user_id"],
        "activity": row["activity_id"],
        "template": row["template_id"],
        "claim": row["claim_id"],
        "valid_from": row["valid_from"],
        "valid_until": row["valid_until"],
        "status": row["status"],
        "version": row["version"],
    }
    if row["status"] in ("locked", "redeemed"):
        record["order"] = row["order_id"]
        record["discount"] = row["discount"]
    if row["status"] == "locked":
        record["locked_until"] = row["locked_until"]
    return record


def order_record(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """An order as the checkout scripts keep it in the wallet's orders hash: the deadline only while locked,
    ``returned`` only once refunded."""
    record = {
        "coupon": row["coupon_id"],
        "status": row["status"],
        "discount": row["discount"],
        "split": row["split"],
        "version": row["version"],
    }
    if row["status"] == "locked":
        record["locked_until"] = row["locked_until"]
    if row["status"] == "refunded":
        record["returned"] = row["returned"]
    return record


def is_final(status: str, valid_until: int, now: int) -> bool:
    """Nothing can change the coupon any more: expired, or redeemed past its validity (a refund then returns
    nothing). Anything else may still change, so the expiry sweep has yet to look at it (or to look again)."""
    return status == "expired" or (status == "redeemed" and valid_until <= now)
