"""One clock for every process (design.md, "Time"): ``now()`` is the wall clock plus an offset a test may move,
and ``skew`` measures it against the Redis node's ``TIME``.

Scripts take ``now`` in ARGV, so two gateways whose clocks disagree would move lock deadlines and window edges
between them. A process whose clock is further than ``CLAIMGATE_MAX_CLOCK_SKEW`` from Redis's keeps its fence
closed for state changes (``overloaded``), and its readiness says so, until its clock is back within the bound.
"""

from __future__ import annotations

import time

from gateway.scripts.runner import RedisClient

_offset = [0.0]


def now() -> float:
    return time.time() + _offset[0]


def move(seconds: float) -> None:
    """Move this process's clock (tests, and soaks of retention): every ``now()`` after it is that far on."""
    _offset[0] += seconds


def set_to(at: float) -> None:
    """Make ``now()`` read ``at`` from this instant, running on from there."""
    _offset[0] = at - time.time()


def reset() -> None:
    _offset[0] = 0.0


async def skew(client: RedisClient) -> tuple[float, float]:
    """How far this process's clock is ahead of the Redis node's (negative: behind), in seconds, the round trip
    halved out; and that round trip, the measure's uncertainty."""
    sent = now()
    seconds, micros = await client.time()
    received = now()
    return (sent + received) / 2 - (int(seconds) + int(micros) / 1_000_000), received - sent
