"""One malformed ``claimed`` entry among thousands: it is dead-lettered with its reason and blocks nothing;
every other claim is persisted once; after the fix ``claimgate replay-dead`` persists it once."""

from __future__ import annotations

import asyncio
import re
import time

import asyncpg
import pytest
from redis.asyncio import Redis

from gateway.ids import new_id
from tests.faults.support import (
    KEYS,
    Load,
    Processes,
    Sale,
    assert_exactly_once,
    assert_reconciled,
    claimgate,
    create_sale,
    drain,
    finish,
    plan,
    query,
    strs,
    wait_drained,
)

pytestmark = pytest.mark.fault
POISON_USER, POISON_DEVICE = "u-poison", "d-poison"
MODE_CHECK = "ALTER TABLE claims ADD CONSTRAINT claims_mode_check CHECK (mode IN ('claim', 'grant', 'code'))"


async def add_poison(redis: Redis, sale: Sale) -> tuple[str, str]:
    """XADD a ``claimed`` entry only Postgres refuses (mode "gift" breaks a CHECK constraint), with the
    partition's next seq like a real one; (its claim id, its entry id)."""
    keys = KEYS.activity(sale.activity_id)
    claim_id, now = new_id(), int(time.time())
    coupons = ",".join(
        f'{{"coupon_id":"{claim_id}.{n}","template_id":"{template}","valid_from":{now},"valid_until":{now + 86400}}}'
        for n, template in enumerate(sale.template_ids, start=1)
    )
    fields = {
        "type": "claimed",
        "id": new_id(),
        "seq": str(await redis.incr(keys.seq)),
        "at": str(now),
        "activity": sale.activity_id,
        "claim_id": claim_id,
        "user": POISON_USER,
        "device": POISON_DEVICE,
        "channel": "",
        "mode": "gift",
        "by": "",
        "answer": f'{{"claim_id":"{claim_id}","coupons":[{coupons}]}}',
        "ordinal": "0",  # a place no real claim holds (theirs start at 1): no conflict, only the constraint
        "idem": "",
        "idem_hash": "",
        "idem_expires": "",
    }
    entry_id = await redis.xadd(keys.events, fields)  # type: ignore[arg-type]
    return claim_id, str(entry_id)


async def restore_mode_check(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DELETE FROM claims WHERE mode NOT IN ('claim', 'grant', 'code')")
        held = await conn.fetchval("SELECT count(*) FROM pg_constraint WHERE conname = 'claims_mode_check'")
        if not held:
            await conn.execute(MODE_CHECK)
    finally:
        await conn.close()


@pytest.mark.timeout(300)
async def test_a_poison_entry_among_thousands_is_dead_lettered_then_replayed_once(
    env: dict[str, str], procs: Processes, rdb: Redis
) -> None:
    database_url = env["CLAIMGATE_DATABASE_URL"]
    gateway = await procs.gateway(env)
    sale = await create_sale(gateway.url, stock=2700)
    worker = procs.worker(env, name="worker", worker_claim_idle_ms="1000")
    load = Load(gateway.url, sale.activity_id, plan(2400), concurrency=32)  # 3,000 claims
    loading = load.start()
    try:
        await load.wait_acked(1300)
        assert not loading.done()
        poison_claim, poison_entry = await add_poison(rdb, sale)
        await asyncio.wait_for(loading, 120)
        await wait_drained(rdb, database_url, [worker])
    finally:
        await finish(loading)
    assert procs.stop(worker) == 0, worker.tail()
    print(load.summary())
    load.assert_clean()

    # Dead-lettered after 3 failures of its own, with the reason; everything else persisted once, nothing
    # pending (checked with the rest by assert_exactly_once).
    keys = KEYS.activity(sale.activity_id)
    dead = [strs(f or {}) for _, f in await rdb.xrange(keys.dead_letters) or []]
    assert len(dead) == 1, dead
    [fields] = dead
    assert (fields["dl_stream"], fields["dl_entry_id"], fields["claim_id"]) == (
        keys.events,
        poison_entry,
        poison_claim,
    )
    assert fields["dl_failures"] == "3" and "CheckViolation" in fields["dl_reason"], fields
    assert re.search(rf"dead-lettered .*{re.escape(poison_entry)}", worker.text()), worker.tail()
    await assert_exactly_once(rdb, database_url, sale, load, allow_dead_letters=1)
    await assert_reconciled(env)  # the ledger and Redis agree: the poison took nothing in either

    try:
        # The fix (here: the schema learns the new mode); replay persists it once and removes it.
        await query(database_url, "ALTER TABLE claims DROP CONSTRAINT claims_mode_check")
        for expected in ("dead letters replayed: 1; still failing (kept): 0", "dead letters replayed: 0;"):
            replay = await claimgate(env, "replay-dead", within=60)
            assert replay.code == 0 and expected in replay.stdout, replay.output
        assert await rdb.xlen(keys.dead_letters) == 0
        await drain(procs, env, rdb)  # the wallet's `delivered` event of the replayed claim
        await assert_exactly_once(rdb, database_url, sale, load, ledger_only={poison_claim: POISON_USER})

        # Reconcile now sees a claim the ledger holds and Redis never took: exactly that, in the activity's
        # counts (taken, stock left, the poison user's and device's counts), nothing else.
        found = await claimgate(env, "reconcile")
        tag = re.escape(keys.tag)
        expected_lines = {
            rf"{tag} config: {tag}:act\[stock_left\] redis='{sale.stock - len(load.acked)}' "
            rf"ledger='{sale.stock - len(load.acked) - 1}'",
            rf"{tag} config: {tag}:act\[taken\] redis='{len(load.acked)}' ledger='{len(load.acked) + 1}'",
            rf"{tag} user_count: {tag}:users\[{POISON_USER}\] redis=None ledger='1'",
            rf"{tag} device_count: {tag}:devices\[{POISON_DEVICE}\] redis=None ledger='1'",
        }
        assert found.code == 1, found.output
        assert len(found.differences) == len(expected_lines), found.output
        for pattern in expected_lines:
            assert any(re.fullmatch(pattern, line) for line in found.differences), (pattern, found.output)
        assert not found.repaired, found.output
    finally:
        await restore_mode_check(database_url)
