"""Ids the gateway makes (claims, coupons, events, activities): never a Redis counter or a stream id.

Hex of the millisecond clock then 64 bits: unique without coordination, and sorting them sorts by creation time,
which gives wallets and lists their newest-first order. Within one process the ids only grow: in a millisecond
that already has an id (or a clock that stepped back) the next id keeps that millisecond and adds a random step
of up to 2^32 to the previous one's bits, so two claims in one millisecond still list in the order they were made.

The random bits come from ``os.urandom`` 4 KiB at a time (one system call per 512 ids, where one per id was a
tenth of a claim's CPU); a forked process (a granian worker) drops what it inherited, so no two processes hand
out the same bits.
"""

from __future__ import annotations

import os
import time

ID_LENGTH = 28
_BATCH = 512
_BITS = 1 << 64
_random: list[int] = []
_last = [0, 0]  # the millisecond and the 64 bits of the last id made here


def _refill() -> None:
    raw = os.urandom(8 * _BATCH)
    _random[:] = [int.from_bytes(raw[i : i + 8], "big") for i in range(0, len(raw), 8)]


def _forget() -> None:
    _random.clear()
    _last[:] = [0, 0]


os.register_at_fork(after_in_child=_forget)


def new_id() -> str:
    if not _random:
        _refill()
    fresh = _random.pop()
    ms = time.time_ns() // 1_000_000
    last_ms, last_bits = _last
    if ms <= last_ms:
        ms, bits = last_ms, last_bits + 1 + (fresh >> 32)
        if bits >= _BITS:  # this millisecond's bits are spent: borrow the next one
            ms, bits = last_ms + 1, fresh
    else:
        bits = fresh
    _last[:] = [ms, bits]
    return f"{ms:012x}{bits:016x}"
