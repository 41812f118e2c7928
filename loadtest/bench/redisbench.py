"""The raw ceiling: the ``claim`` script called directly on Valkey by redis-benchmark (``EVALSHA``, pipelined,
many calls per round trip), on an activity mirrored with ``put_activity``; every call a new random user, device,
claim id and event id (``__rand_int__``), so nearly every call is granted and takes the script's full path."""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass

from gateway.claim.service import NO_BODY_HASH
from gateway.keys import KeySpace
from gateway.scripts.calls import claim as calls
from gateway.scripts.runner import EvalshaCommand

RANDOM_SPACE = (
    100_000_000_000  # 12-digit ids: two calls drawing the same user are rare (counted, not assumed)
)


def claim_call(activity_id: str, sha: str, now: int, idempotency_ttl: int) -> list[str]:
    """EVALSHA of ``claim`` for a random user, built by the call ``ClaimService.claim`` uses (no Idempotency-Key)."""
    return calls.claim(
        EvalshaCommand(sha),
        calls.ClaimKeys.of(KeySpace.activity(activity_id)),
        now=now,
        activity_id=activity_id,
        user_id="bu:__rand_int__",
        device_id="bd:__rand_int__",
        channel="",
        blocked=False,
        idem_key="",
        body_hash=NO_BODY_HASH,
        idem_ttl=idempotency_ttl,
        claim_id="bc__rand_int__",
        event_id="be__rand_int__",
        reg=None,
        orders=None,
        tags=(),
        mode="claim",
        operator="",
    )


def command(port: int, call: list[str], *, calls: int, clients: int, pipeline: int) -> list[str]:
    return [
        "redis-benchmark",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-c",
        str(clients),
        "-n",
        str(calls),
        "-P",
        str(pipeline),
        "-r",
        str(RANDOM_SPACE),
        "--csv",
        *call,
    ]


@dataclass(frozen=True)
class RawResult:
    calls: int
    rate: float  # redis-benchmark's requests per second
    p50_ms: float
    p99_ms: float


def parse_csv(stdout: str) -> tuple[float, float, float]:
    """(rps, p50 ms, p99 ms) from ``redis-benchmark --csv`` (the row after the header)."""
    rows = [row for row in csv.reader(io.StringIO(stdout)) if row]
    header = next((i for i, row in enumerate(rows) if row and row[0] == "test"), None)
    if header is None or header + 1 >= len(rows):
        raise ValueError(f"no CSV result in redis-benchmark's output:\n{stdout[-2000:]}")
    names, values = rows[header], rows[header + 1]
    found = dict(zip(names, values, strict=False))
    return float(found["rps"]), float(found.get("p50_latency_ms", 0)), float(found.get("p99_latency_ms", 0))


def now() -> int:
    return int(time.time())
