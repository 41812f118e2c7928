"""Postgres away for a while under claims (killed with SIGKILL, or a fast shutdown), then started again on the
same port and data directory: claims keep being answered (the claim path never touches Postgres), nothing is
dead-lettered (Postgres being away is never an entry's fault), and once it is back every acknowledged claim is
persisted exactly once.

This test runs its own Postgres (so the session's is not disturbed) with the session's Valkey, emptied: a
fresh ledger has no partition marks, so the fence opens on the empty Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.devstack.pidfile import PidFile
from gateway.devstack.postgres import (
    PostgresServer,
    kill_postgres,
    restart_postgres,
    start_postgres,
    stop_postgres,
)
from gateway.devstack.valkey import ValkeyServer
from gateway.migrate import migrate
from tests.faults.support import (
    Load,
    Processes,
    assert_exactly_once,
    assert_reconciled,
    claims_rows,
    create_sale,
    finish,
    plan,
    process_env,
    registered_streams,
    stream_backlog,
    wait_drained,
    wait_until,
)

pytestmark = [pytest.mark.fault, pytest.mark.short_fault]
OUTAGE_SECONDS = 5.0


NOISE = ("the database system is starting up", "not yet accepting connections", "Consistent recovery state")


async def restart(server: PostgresServer, pidfile: PidFile) -> PostgresServer:
    """The same data directory on the same port; a failure shows the server's log without the refusals of
    clients knocking while it recovers (start_postgres's own message shows only the last 30 lines)."""
    try:
        return await asyncio.to_thread(restart_postgres, server, pidfile)
    except RuntimeError as exc:
        log = server.log_path.read_text(errors="replace").splitlines()
        lines = [line for line in log if not any(noise in line for noise in NOISE)]
        raise AssertionError(f"restarting Postgres failed: {exc}\n" + "\n".join(lines[-60:])) from exc


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["sigkill", "fast_shutdown"])
async def test_postgres_down_for_a_while_under_claims_loses_and_doubles_nothing(
    how: str,
    tmp_path: Path,
    pidfile: PidFile,
    valkey: ValkeyServer,
    clean: None,
    procs: Processes,
    rdb: Redis,
) -> None:
    # durable: a commit the worker acknowledges must survive the postmaster's SIGKILL (as in production).
    server: PostgresServer = await asyncio.to_thread(
        start_postgres, tmp_path / "pg", durable=True, pidfile=pidfile
    )
    try:
        await migrate(server.url)
        # Load shedding past a stream lag is set far above this test's lag: no claim may be shed here.
        env = process_env(valkey.url, server.url, shed_lag="1000000")
        gateway = await procs.gateway(env)
        sale = await create_sale(gateway.url, stock=2700)
        worker = procs.worker(env, name="worker", worker_claim_idle_ms="1000")
        streams = await registered_streams(server.url)
        load = Load(gateway.url, sale.activity_id, plan(2400), concurrency=32, rate=250)  # 3,000 over ~12 s
        loading = load.start()
        try:
            await load.wait_acked(400)
            await wait_until("the worker persisting", lambda: claims_rows(server.url), 30)
            assert not loading.done()
            if how == "sigkill":
                await asyncio.to_thread(kill_postgres, server)
            else:
                await asyncio.to_thread(stop_postgres, server, pidfile)
            acked_at_stop = len(load.acked)
            await asyncio.sleep(OUTAGE_SECONDS)
            assert worker.alive(), worker.tail()
            backlog = await stream_backlog(rdb, streams)
            acked_while_down = len(load.acked) - acked_at_stop
            server = await restart(server, pidfile)
            assert not loading.done(), "the load should outlast the outage"
            await asyncio.wait_for(loading, 120)
            await wait_drained(rdb, server.url, [worker])
        finally:
            await finish(loading)
        assert procs.stop(worker) == 0, worker.tail()
        print(
            load.summary(),
            f"; {acked_while_down} acknowledged while Postgres was down; backlog then {backlog}",
        )

        # While Postgres was away claims were answered and piled up in the streams, unpersisted.
        assert acked_while_down > 500, load.summary()
        assert backlog.get(f"{sale.tag}:events", (0, 0))[1] > 0, backlog
        assert "batch not persisted" in worker.text(), worker.tail()
        # No 5xx at all (the lag stayed under the shedding threshold), only sold-out / limit refusals.
        load.assert_clean()
        # Nothing dead-lettered (assert_exactly_once checks every <tag>:dead stream is empty), each claim once.
        await assert_exactly_once(rdb, server.url, sale, load)
        await assert_reconciled(env)
    finally:
        procs.stop_all()  # before the server they use
        await asyncio.to_thread(stop_postgres, server, pidfile)


LONG_OUTAGE_SECONDS = 60.0


@pytest.mark.timeout(400)
async def test_a_gateway_started_during_a_long_outage_serves_and_everything_is_persisted_after(
    tmp_path: Path,
    pidfile: PidFile,
    valkey: ValkeyServer,
    clean: None,
    procs: Processes,
    rdb: Redis,
) -> None:
    """Postgres away for a minute under claims. A gateway started meanwhile cannot check Redis against the
    ledger, but Redis did not restart: another process already checked its run id, so it serves. The lag is no
    shedding point of its own (the session's Valkey has 1 GB of maxmemory: its headroom decides), and no claim
    is refused but for the sale's own reasons. Once Postgres is back, every acknowledged claim is persisted
    exactly once."""
    server: PostgresServer = await asyncio.to_thread(
        start_postgres, tmp_path / "pg", durable=True, pidfile=pidfile
    )
    try:
        await migrate(server.url)
        env = process_env(valkey.url, server.url)  # no CLAIMGATE_SHED_LAG: Redis's memory decides
        first = await procs.gateway(env, name="gw-first")
        sale = await create_sale(first.url, stock=40_000, per_user_limit=1, pack_size=1)
        worker = procs.worker(env, name="worker", worker_claim_idle_ms="1000")
        streams = await registered_streams(server.url)
        before = Load(first.url, sale.activity_id, plan(12_000, prefix="f"), concurrency=16, rate=180)
        loading = [before.start()]
        try:
            await before.wait_acked(300)
            await wait_until("the worker persisting", lambda: claims_rows(server.url), 30)
            await asyncio.to_thread(kill_postgres, server)
            down_at = asyncio.get_running_loop().time()
            acked_at_stop = len(before.acked)
            await asyncio.sleep(3)
            second = await procs.gateway(env, name="gw-during")  # waits for its fence to open
            during = Load(second.url, sale.activity_id, plan(12_000, prefix="s"), concurrency=16, rate=180)
            loading.append(during.start())
            await during.wait_acked(300)
            await asyncio.sleep(max(0.0, LONG_OUTAGE_SECONDS - (asyncio.get_running_loop().time() - down_at)))
            assert worker.alive(), worker.tail()
            backlog = await stream_backlog(rdb, streams)
            acked_while_down = len(before.acked) + len(during.acked) - acked_at_stop
            server = await restart(server, pidfile)
            await asyncio.wait_for(asyncio.gather(*loading), 200)
            await wait_drained(rdb, server.url, [worker], within=120)
        finally:
            for task in loading:
                await finish(task)
        assert procs.stop(worker) == 0, worker.tail()
        lag = sum(pending + lag for pending, lag in backlog.values())
        print(
            f"\n{acked_while_down} claims acknowledged in {LONG_OUTAGE_SECONDS:.0f} s without Postgres, lag then"
            f" {lag} events; first gateway: {before.summary()}; started during the outage: {during.summary()}"
        )
        assert acked_while_down > 10_000 and during.acked, (before.summary(), during.summary())
        before.assert_clean()  # no 5xx at all: nothing shed, nothing fenced
        during.assert_clean()
        both = Load(first.url, sale.activity_id)
        both.acked = {**before.acked, **during.acked}
        await assert_exactly_once(rdb, server.url, sale, both)
        await assert_reconciled(env)
    finally:
        procs.stop_all()
        await asyncio.to_thread(stop_postgres, server, pidfile)
