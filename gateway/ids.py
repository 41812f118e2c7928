"""Ids the gateway makes (claims, coupons, events, activities): never a Redis counter or a stream id.

Hex of the millisecond clock then 64 random bits: unique without coordination, and sorting them sorts by
creation time, which gives wallets and lists their newest-first order.

The random bits come from ``os.urandom`` 4 KiB at a time (one system call per 512 ids, where one per id was a
tenth of a claim's CPU); a forked process (a granian worker) drops what it inherited, so no two processes
hand out the same bits.
"""

from __future__ import annotations

import os
import time

ID_LENGTH = 28
_BATCH = 512
_random_hex: list[str] = []


def _refill() -> None:
    raw = os.urandom(8 * _BATCH).hex()
    _random_hex[:] = [raw[i : i + 16] for i in range(0, len(raw), 16)]


os.register_at_fork(after_in_child=_random_hex.clear)


def new_id() -> str:
    if not _random_hex:
        _refill()
    return f"{time.time_ns() // 1_000_000:012x}{_random_hex.pop()}"


def new_ids(count: int) -> list[str]:
    return [new_id() for _ in range(count)]
