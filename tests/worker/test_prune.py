"""The ledger's idempotency records leave once expired, and only then: what restore and reconcile read (the
unexpired ones) is never touched."""

from __future__ import annotations

import asyncpg
import pytest

from gateway import clock
from gateway.tokens import UserIdentity
from tests.worker.conftest import drain
from tests.worker.test_sink import make_activity
from worker.consumer import Consumer
from worker.prune import prune_expired, prune_idempotency

_ADD = """
INSERT INTO idempotency_records (redis_key, partition, body_hash, answer, expires_at)
SELECT 'k' || i, '{a:p}', 'h', 'a', $1::bigint + i FROM generate_series(1, $2::int) AS i
"""


async def _keys(pool: asyncpg.Pool) -> list[str]:
    return [r["redis_key"] for r in await pool.fetch("SELECT redis_key FROM idempotency_records ORDER BY 1")]


async def test_only_expired_records_leave_a_bounded_pass_at_a_time(consumer: Consumer) -> None:
    pool = consumer.pool
    await pool.execute(_ADD, 1000, 7)  # k1..k7 expire at 1001..1007
    assert await prune_idempotency(pool, 1000) == 0
    assert await prune_idempotency(pool, 1003, batch=2, batches=1) == 2  # the oldest first, up to the bound
    assert await _keys(pool) == ["k3", "k4", "k5", "k6", "k7"]
    assert await prune_idempotency(pool, 1005, batch=2, batches=5) == 3  # k3 (at 1003: expired), k4, k5
    assert await _keys(pool) == ["k6", "k7"]


@pytest.mark.usefixtures("moved_clock")
async def test_the_worker_prunes_a_keyed_claims_record_once_it_expires(
    consumer: Consumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("worker.housekeeping.PRUNE_SECONDS", 0.0)  # due at every step
    activity_id = await make_activity(consumer, stock=10, per_user_limit=1)
    now = int(clock.now())
    await consumer.claims.claim(activity_id, UserIdentity("u1", "d1"), now=now, idempotency_key="retry-1")
    await drain(consumer)
    expires_at = await consumer.pool.fetchval("SELECT expires_at FROM idempotency_records")
    assert expires_at > now + 3600  # the idempotency time, not an instant

    clock.set_to(expires_at - 1)
    await consumer.step()
    assert await consumer.pool.fetchval("SELECT count(*) FROM idempotency_records") == 1
    assert consumer.housekeeping is not None
    assert consumer.housekeeping.idempotency_pruned == 0

    clock.set_to(expires_at)
    await consumer.step()
    assert await consumer.pool.fetchval("SELECT count(*) FROM idempotency_records") == 0
    assert consumer.housekeeping.idempotency_pruned == 1


async def test_a_postgres_away_postpones_the_pass_without_failing_the_lane(
    caplog: pytest.LogCaptureFixture,
) -> None:
    away = await asyncpg.create_pool(
        "postgresql://nobody@127.0.0.1:1/none", min_size=0, max_size=1, timeout=1
    )
    try:
        assert await prune_expired(away) == 0
    finally:
        await away.close()
    assert "idempotency prune postponed" in caplog.text
