"""Ids the gateway makes (claims, coupons, events, activities): never a Redis counter or a stream id.

Hex of the millisecond clock then 64 random bits: unique without coordination, and sorting them sorts by
creation time, which gives wallets and lists their newest-first order.
"""

from __future__ import annotations

import secrets
import time

ID_LENGTH = 28


def new_id() -> str:
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(8)}"


def new_ids(count: int) -> list[str]:
    return [new_id() for _ in range(count)]
