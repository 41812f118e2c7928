"""The gateway killed (SIGKILL, its worker process too) and restarted on the same port in the middle of a
load: every claim answered 201 before the kill is in Postgres exactly once, and clients retrying with their
Idempotency-Key after the gap get their first answer (a claim that ran before the kill answers as a replay)."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from tests.faults.support import (
    Load,
    Processes,
    assert_exactly_once,
    assert_reconciled,
    create_sale,
    finish,
    plan,
    wait_drained,
)

pytestmark = pytest.mark.fault


@pytest.mark.timeout(300)
async def test_a_gateway_killed_and_restarted_mid_load_loses_no_acknowledged_claim(
    env: dict[str, str], procs: Processes, rdb: Redis
) -> None:
    database_url = env["CLAIMGATE_DATABASE_URL"]
    gateway = await procs.gateway(env, name="first")
    sale = await create_sale(gateway.url, stock=2300)
    worker = procs.worker(env, name="worker", worker_claim_idle_ms="1000")
    load = Load(gateway.url, sale.activity_id, plan(2000), concurrency=32, keyed=True, retry=True)
    loading = load.start()
    try:
        await load.wait_acked(700)
        assert not loading.done()
        gateway.proc.kill_group()  # kill -9: the granian parent and its worker process
        assert await gateway.proc.wait_exit(10) is not None
        before_kill = dict(load.acked)
        await asyncio.sleep(0.5)  # clients meet a closed port for a while
        restarted = await procs.gateway(env, port=gateway.port, name="restarted")
        await asyncio.wait_for(loading, 120)
        await wait_drained(rdb, database_url, [worker])
    finally:
        await finish(loading)
    assert procs.stop(worker) == 0, worker.tail()
    assert restarted.proc.alive(), restarted.proc.tail()
    print(load.summary(), f"; {load.acked_after_error} answered after a transport error")

    assert load.transport_errors, "the kill should have been felt by clients"
    for claim_id, answer in before_kill.items():
        assert load.acked[claim_id] == answer
    load.assert_answered()
    ledger = await assert_exactly_once(rdb, database_url, sale, load)
    assert set(before_kill) <= set(load.acked) and ledger.claims == len(load.acked)
    await assert_reconciled(env)
