"""A Redis rollback between the wallet lane and the activity lane (design.md, "No coupon without its claim").

The worker's wallet lane persists every ``delivered`` while its activity lane has not persisted the claims (held
back here by ``CLAIMGATE_WORKER_STALL``, as a slow lane or a lagging worker would be); then Redis loses its last
writes (an older copy of its AOF put back): the claims and their deliveries are gone from Redis, and the ledger
holds the deliveries only. The wallets are behind their marks, so the fence closes until restore; the activity,
level with its mark, sells its units again. Had the ledger taken those coupons without their claims, restore would
put them back into wallets and the units would be sold twice, users passing their limit. Held until their claim
comes, they stay out: after restore and a sell-out, packs out never exceed the stock and nobody passes the limit,
in the ledger or in Redis.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest
from redis.asyncio import Redis

from tests.faults.support import (
    Load,
    attempts,
    claimgate,
    create_sale,
    fence_open,
    finish,
    query,
    registered_streams,
    stream_backlog,
    wait_readiness,
    wait_until,
)
from tests.faults.test_redis_durability import LIMIT, StartStack, aof_stack, users  # noqa: F401

pytestmark = [pytest.mark.fault]


async def coupons_in_wallets(rdb: Redis, activity_id: str) -> Counter[str]:
    """Per user, the activity's coupons Redis's wallets hold."""
    held: Counter[str] = Counter()
    async for key in rdb.scan_iter(match="{w:*}:coupons", count=1000):
        for raw in (await rdb.hgetall(key)).values():
            record = json.loads(raw)
            if record["activity"] == activity_id:
                held[record["user"]] += 1
    return held


@pytest.mark.short_fault
@pytest.mark.timeout(240)
async def test_a_rollback_after_the_wallet_lane_committed_and_before_the_activity_lane_sells_no_unit_twice(
    aof_stack: StartStack,  # noqa: F811
) -> None:
    stack = await aof_stack("everysec")
    stock, first = 60, users("a", 25)
    sale = await create_sale(stack.gateway.url, stock=stock, per_user_limit=LIMIT, pack_size=1)
    stack.valkey.copy_aof(stack.side)  # the sale defined, nothing claimed yet

    stalled = stack.procs.worker(stack.env, "w-stalled", worker_stall="activities")
    load = Load(
        stack.gateway.url,
        sale.activity_id,
        concurrency=16,
        keyed=True,
        retry=True,
        retry_overloaded=True,
        phase="lost",
    )
    await asyncio.wait_for(load.run(attempts(first, LIMIT, "a")), 60)
    lost = load.acked_ids("lost")
    assert len(lost) == len(first) * LIMIT, load.summary()

    async def wallets_drained() -> bool:
        wallets = [s for s in await registered_streams(stack.database_url) if s.startswith("{w:")]
        return not await stream_backlog(stack.rdb, wallets)

    await wait_until("the wallet lane persisted every delivery", wallets_drained, 30, 0.1)
    ledger = await query(
        stack.database_url,
        "SELECT (SELECT count(*) FROM claims) AS claims, (SELECT count(*) FROM coupons) AS coupons,"
        " (SELECT count(*) FROM held_entries) AS held",
    )
    assert dict(ledger[0]) == {"claims": 0, "coupons": 0, "held": len(lost)}, "a coupon without its claim"
    stack.procs.stop(stalled)

    stack.valkey.kill()
    await stack.restart(stack.side)  # the claims and their deliveries are gone from Redis
    behind = await stack.seqs_behind()
    assert behind and all(p.startswith("{w:") for p in behind), behind
    restored = await claimgate(stack.env, "restore")
    assert restored.code == 0, restored.output
    await wait_readiness(stack.gateway, fence_open, "the fence open after restore")
    assert await coupons_in_wallets(stack.rdb, sale.activity_id) == Counter(), (
        "restore gave back lost coupons"
    )

    worker = stack.worker("w-after")
    load.phase = "after"
    selling = load.start(attempts(first, LIMIT, "again") + attempts(users("b", 40), 1, "b"))
    try:
        await asyncio.wait_for(selling, 120)
    finally:
        await finish(selling)
    await stack.wait_drained(worker)

    ledger = await query(
        stack.database_url,
        "SELECT user_id, count(*) AS n FROM coupons WHERE activity_id = $1 GROUP BY user_id",
        sale.activity_id,
    )
    ledger_per_user = Counter({r["user_id"]: int(r["n"]) for r in ledger})
    wallets = await coupons_in_wallets(stack.rdb, sale.activity_id)
    for side, per_user in (("ledger", ledger_per_user), ("Redis", wallets)):
        assert sum(per_user.values()) <= stock, f"{side}: {sum(per_user.values())} packs out of {stock}"
        over = {u: n for u, n in per_user.items() if n > LIMIT}
        assert not over, f"{side}: users above the limit of {LIMIT}: {over}"
    sold = await stack.assert_sold_out(sale)
    assert len(sold) == stock and not set(lost) & {r.claim_id for r in sold}
    print(f"\nlane rollback: {len(lost)} claims lost with Redis, then {len(sold)} sold; {load.summary()}")
