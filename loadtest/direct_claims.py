"""Claims made the gateway's own way without HTTP, for the load tools: an activity mirrored into Valkey by the
``put_activity`` script, and claims of distinct users through ``ClaimService.claim`` (the ``claim`` script in the
activity's slot, then ``deliver`` in the user's wallet bucket), many in flight, from one or several client
processes (each its own client and runner, as one gateway process has)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from gateway.claim.service import ClaimService
from gateway.ids import new_id
from gateway.keys import KeySpace
from gateway.outcomes import Outcome
from gateway.scripts.calls import catalog as calls
from gateway.scripts.fence import Fence
from gateway.scripts.registry import load_scripts
from gateway.scripts.runner import ScriptRunner, connect
from gateway.tokens import UserIdentity

WALLET_BUCKETS = CODE_BUCKETS = 64  # the deployment defaults
IDEMPOTENCY_TTL = 90_000


def activity_config(now: int, stock: int) -> dict[str, object]:
    """put_activity's ARGV[5]: open now, ``stock`` packs of one coupon, one per user."""
    return {
        "status": "active",
        "starts_at": now - 60,
        "ends_at": now + 3600,
        "stock": stock,
        "per_user_limit": 1,
        "per_device_limit": 0,
        "elig": "",
        "pack": json.dumps([{"template_id": "t1", "count": 1, "valid_days": 7}], separators=(",", ":")),
        "face_per_pack": 500,
    }


async def put_activity(runner: ScriptRunner, activity_id: str, stock: int) -> None:
    now = int(time.time())
    reply = await calls.put_activity(
        runner,
        calls.PutActivityKeys.of(KeySpace.activity(activity_id)),
        now=now,
        event_id=new_id(),
        operator="loadtest",
        activity_id=activity_id,
        config=json.dumps(activity_config(now, stock)),
        allow_users="[]",
    )
    assert reply[0] == "ok", reply


async def claims(service: ClaimService, activity_id: str, users: list[str], concurrency: int) -> list[float]:
    """Each user claims once; the latency of each claim (both round trips), in seconds."""
    latencies: list[float] = []
    pending = iter(users)

    async def lane() -> None:
        for user in pending:
            began = time.perf_counter()
            result = await service.claim(activity_id, UserIdentity(user, f"d-{user}"), now=int(time.time()))
            latencies.append(time.perf_counter() - began)
            assert result.outcome is Outcome.OK, result

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return latencies


async def claim_lanes(url: str, activity_id: str, users: list[str], concurrency: int) -> list[float]:
    """One client process's share: its own client and runner, as one gateway process has."""
    client = await connect(url, max_connections=concurrency)
    try:
        runner = ScriptRunner(client, load_scripts(), Fence(open_=True), max_in_flight=concurrency)
        service = ClaimService(runner, KeySpace(WALLET_BUCKETS, CODE_BUCKETS), IDEMPOTENCY_TTL)
        return await claims(service, activity_id, users, concurrency)
    finally:
        await client.aclose()


@dataclass(frozen=True)
class Share:
    began: float
    ended: float
    latencies: list[float]


def client_process(url: str, activity_id: str, users: list[str], concurrency: int, start_at: float) -> Share:
    """In a process of its own: wait for the common start, claim, report."""
    import uvloop

    async def run() -> Share:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        began = time.time()
        latencies = await claim_lanes(url, activity_id, users, concurrency)
        return Share(began, time.time(), latencies)

    return uvloop.run(run())
