"""Retired activities against real Valkey and Postgres: the fence opens with retired partitions present (and still
closes for one really behind); reconcile reports nothing for a retired partition and restore leaves it retired; a
late grant and a late restock each bring the partition back from the ledger (per-user counts as before, the
grant's coupons delivered and persisted); two gateways reviving at once; stats, the activity's record and a claim
over HTTP before and after retirement."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from gateway.catalog.campaign import StockChange
from gateway.catalog.rebuild import activity_state
from gateway.catalog.retirement import Reviver
from gateway.claim.grants import GrantBody
from gateway.events import GrantAnswer
from gateway.outcomes import DomainError, Outcome
from gateway.scripts import ledger_check
from gateway.scripts.fence import Fence
from tests.helpers import ADMIN, bearer
from tests.recovery.support import reconciler
from tests.recovery.test_restore import empty_redis, restore_all
from tests.retire_support import (
    KEYS,
    OPERATOR,
    Ended,
    admin,
    ended_activity,
    grants,
    partition_keys,
    retired_at,
    sweep,
)
from tests.worker.test_retire_sweep import persist
from worker.consumer import Consumer
from worker.recovery.restore import STILL_RETIRED


async def retired_activity(consumer: Consumer) -> tuple[Ended, int]:
    """An ended activity, persisted and retired; the seq it retired at."""
    ended = await ended_activity(consumer)
    await persist(consumer)
    assert await sweep(consumer).sweep(int(time.time())) == 1
    marker = await consumer.client.get(ended.keys.retired)
    assert marker is not None
    return ended, int(marker)


async def restored_events(consumer: Consumer, ended: Ended) -> list[dict[str, str]]:
    entries = await consumer.client.xrange(ended.keys.events)
    return [fields for _, fields in entries if fields.get("type") == "restored"]


async def live_as_the_ledger_says(consumer: Consumer, ended: Ended) -> None:
    """The partition is back, exactly as the ledger rebuilds it, and the ledger records it live."""
    assert await consumer.client.exists(ended.keys.retired) == 0
    await persist(consumer)
    assert (await reconciler(consumer).run([ended.keys.tag])).differences == []
    assert await retired_at(consumer, ended) == (None, None)


# --- the fence ---------------------------------------------------------------------------------------------


async def test_the_fence_opens_with_retired_partitions_and_closes_for_one_behind(consumer: Consumer) -> None:
    first, mark = await retired_activity(consumer)
    second, _ = await retired_activity(consumer)
    live = await ended_activity(consumer, ended_ago=-3600)
    await persist(consumer)
    assert await consumer.client.exists(first.keys.seq, second.keys.seq) == 0  # no seq: their markers stand

    assert await ledger_check.partitions_behind(consumer.client, consumer.pool) == []
    fence = Fence()
    await ledger_check.check(consumer.client, consumer.pool, fence)
    assert fence.is_open

    # A live partition that lost writes is behind, retired ones still are not.
    await consumer.client.decr(live.keys.seq)
    assert await ledger_check.partitions_behind(consumer.client, consumer.pool) == [live.keys.tag]
    fence = Fence()
    await ledger_check.check(consumer.client, consumer.pool, fence)
    assert not fence.is_open and live.keys.tag in fence.why_closed
    await consumer.client.incr(live.keys.seq)

    # A marker below the ledger's mark (revived and changed, then Redis rolled back to the retirement) is behind.
    await consumer.client.set(first.keys.retired, mark - 1)
    assert await ledger_check.partitions_behind(consumer.client, consumer.pool) == [first.keys.tag]


# --- reconcile and restore ---------------------------------------------------------------------------------


async def test_reconcile_reports_nothing_and_restore_leaves_a_retired_partition(consumer: Consumer) -> None:
    ended, marker = await retired_activity(consumer)
    before = await partition_keys(consumer.client, ended.keys)

    report = await reconciler(consumer).run()
    assert report.differences == [] and report.repaired == []

    for force in (False, True):
        done = {d.partition: d.action for d in await restore_all(consumer, force=force)}
        assert done[ended.keys.tag] == STILL_RETIRED
        assert await partition_keys(consumer.client, ended.keys) == before
        assert await consumer.client.get(ended.keys.retired) == str(marker)
    assert await retired_at(consumer, ended) != (None, None)

    # Something a retired partition should not hold is reported.
    await consumer.client.hset(ended.keys.user_counts, "u9", "1")
    [difference] = (await reconciler(consumer).run([ended.keys.tag])).differences
    assert (difference.what, difference.key) == ("retired", ended.keys.user_counts)


async def test_reconcile_records_a_retirement_the_ledger_missed(consumer: Consumer) -> None:
    ended, marker = await retired_activity(consumer)
    await consumer.pool.execute("UPDATE activities SET retired_at = NULL")  # a crash before the record
    await consumer.pool.execute("UPDATE streams SET retired_at = NULL")

    report = await reconciler(consumer).run([ended.keys.tag])

    assert report.differences == []
    assert report.repaired == [
        f"{ended.keys.tag} recorded as retired in the ledger (retired in Redis at seq {marker})"
    ]
    assert None not in await retired_at(consumer, ended)


async def test_restore_after_redis_lost_a_retired_partition_rebuilds_it_live(consumer: Consumer) -> None:
    ended, _ = await retired_activity(consumer)
    await empty_redis(consumer)
    assert ended.keys.tag in await ledger_check.partitions_behind(consumer.client, consumer.pool)

    done = {d.partition: d.action for d in await restore_all(consumer)}

    assert done[ended.keys.tag] == "restored"
    await live_as_the_ledger_says(consumer, ended)
    assert await ledger_check.partitions_behind(consumer.client, consumer.pool) == []


# --- late changes bring the partition back -----------------------------------------------------------------


async def test_a_late_grant_brings_the_partition_back_first(consumer: Consumer) -> None:
    ended, marker = await retired_activity(consumer)
    ledger = await activity_state(consumer.pool, ended.keys.tag, marker, int(time.time()))

    answer = await grants(consumer).grant(ended.activity.id, GrantBody(["u1", "u4", "u5", "u6"]), "bob", None)

    results = msgspec.json.decode(answer, type=GrantAnswer).results
    assert [r.error for r in results] == [Outcome.LIMIT_REACHED, None, None, None]  # u1 took 2 before
    assert len(await restored_events(consumer, ended)) == 1  # one revival for the call's users
    config = await consumer.client.hgetall(ended.keys.config)
    assert config["taken"] == str(int(ledger.config["taken"]) + 3)
    assert await consumer.client.hgetall(ended.keys.user_counts) == {
        **ledger.users,
        "u4": "1",
        "u5": "1",
        "u6": "1",
    }
    assert await consumer.client.hgetall(ended.keys.device_counts) == ledger.devices
    assert int(await consumer.client.get(ended.keys.seq)) == marker + 1 + 3  # restored, then 3 claims
    await live_as_the_ledger_says(consumer, ended)
    coupons = await consumer.pool.fetch(
        "SELECT c.user_id FROM coupons c JOIN claims k USING (claim_id) WHERE k.activity_id = $1 AND k.mode = 'grant'",
        ended.activity.id,
    )
    assert sorted(row["user_id"] for row in coupons) == ["u4", "u4", "u5", "u5", "u6", "u6"]  # 2 a pack
    for user in ("u4", "u5", "u6"):
        assert await consumer.client.zcard(KEYS.wallet(user).user_index(user)) == 2


async def test_a_late_restock_brings_the_partition_back_first(consumer: Consumer) -> None:
    ended, marker = await retired_activity(consumer)
    ledger = await activity_state(consumer.pool, ended.keys.tag, marker, int(time.time()))

    left = await admin(consumer).restock(ended.activity, StockChange(3), OPERATOR, int(time.time()))

    assert left == int(ledger.config["stock_left"]) + 3
    assert await consumer.client.hgetall(ended.keys.user_counts) == ledger.users
    assert len(await restored_events(consumer, ended)) == 1
    await live_as_the_ledger_says(consumer, ended)
    actions = await consumer.pool.fetch(
        "SELECT action FROM audit WHERE partition = $1 AND seq > $2 ORDER BY seq", ended.keys.tag, marker
    )
    assert [row["action"] for row in actions] == ["restore", "change_stock"]


async def test_an_activity_an_operator_ended_is_not_brought_back_for_changes_it_refuses(
    consumer: Consumer,
) -> None:
    ended = await ended_activity(consumer)
    assert await admin(consumer).set_status(ended.activity.id, "end", OPERATOR, int(time.time())) == "ended"
    await persist(consumer)
    assert await sweep(consumer).sweep(int(time.time())) == 1
    before = await partition_keys(consumer.client, ended.keys)

    answer = await grants(consumer).grant(ended.activity.id, GrantBody(["u8"]), "bob", None)
    assert [r.error for r in msgspec.json.decode(answer, type=GrantAnswer).results] == [Outcome.ENDED]
    with pytest.raises(DomainError) as refused:
        await admin(consumer).restock(ended.activity, StockChange(3), OPERATOR, int(time.time()))
    assert refused.value.outcome is Outcome.STATE_CONFLICT

    assert await partition_keys(consumer.client, ended.keys) == before  # still retired: nothing brought back
    assert None not in await retired_at(consumer, ended)


async def test_two_gateways_reviving_at_once_leave_one_partition(consumer: Consumer) -> None:
    ended, marker = await retired_activity(consumer)
    now = int(time.time())
    one, other = (Reviver(consumer.pool, consumer.runner, KEYS) for _ in range(2))  # two processes

    outcomes = await asyncio.gather(
        one.revive(ended.activity.id, "alice", now), other.revive(ended.activity.id, "bob", now)
    )

    assert sorted(outcomes) == sorted([Outcome.OK, Outcome.REPLAY])
    assert len(await restored_events(consumer, ended)) == 1
    assert int(await consumer.client.get(ended.keys.seq)) == marker + 1
    await live_as_the_ledger_says(consumer, ended)
    # Retired again by a later pass, once the ledger holds the revival.
    assert await sweep(consumer).sweep(int(time.time())) == 1
    assert await consumer.client.get(ended.keys.retired) == str(marker + 1)


# --- over HTTP ---------------------------------------------------------------------------------------------


async def test_stats_and_the_record_answer_as_before_and_a_claim_is_ended(
    consumer: Consumer, client: AsyncTestClient[Any]
) -> None:
    ended = await ended_activity(consumer)
    await persist(consumer)
    url = f"/v1/admin/activities/{ended.activity.id}"

    async def read() -> tuple[dict[str, Any], dict[str, Any]]:
        stats, record = await client.get(f"{url}/stats", headers=ADMIN), await client.get(url, headers=ADMIN)
        assert stats.status_code == 200 and record.status_code == 200, (stats.text, record.text)
        return stats.json(), record.json()

    before = await read()
    assert before[0]["stock_left"] == 4 and before[0]["claimed"] == before[0]["persisted"] == 4
    assert await sweep(consumer).sweep(int(time.time())) == 1

    assert await read() == before
    refused = await client.post(f"/v1/activities/{ended.activity.id}/claim", headers=bearer("u7", "d7"))
    assert refused.status_code == 409 and refused.json()["error"] == "ended"
    assert await consumer.client.exists(ended.keys.retired) == 1  # nothing brought back
    assert await consumer.client.exists(ended.keys.config) == 0

    granted = await client.post(f"{url}/grants", json={"user_ids": ["u7"]}, headers=ADMIN)
    assert granted.status_code == 200 and "claim_id" in granted.json()["results"][0], granted.text
    after = await read()
    assert after[0]["stock_left"] == 3 and after[0]["claimed"] == 5
    assert after[1] == {**before[1], "stock_left": 3}
    assert await consumer.client.exists(ended.keys.retired) == 0
    await live_as_the_ledger_says(consumer, ended)
