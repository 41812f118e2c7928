"""Redis durability (design.md, "Redis restarts, rollbacks, durability"): each test runs its own standalone Valkey
with AOF (automatic rewrites off) under the real gateway and worker processes, the session Postgres as ledger.

1. safe (``appendfsync always``): ``kill -9`` of Redis under load, restarted from its AOF on the same port.
   Nothing acknowledged is lost, the gateway's fence reopens by itself (Redis is not behind the ledger), and
   while Redis is away claims answer only 201, a refusal, or 503 ``overloaded`` with Retry-After.
2. fast (``everysec``), rollback of a drained Redis: an older copy of the AOF folder is put back after the worker
   persisted everything. The ledger is ahead: the fence holds (503 ``overloaded``, /readyz names partitions
   behind) until ``claimgate restore``; then the sale goes on to sold out and no unit is sold twice.
3. fast, rollback without a drain (what a machine crash does to the fast setting): the worker is stopped at the
   copy. The claims acknowledged after the copy are in neither the ledger nor the restored Redis: the stated
   cost, measured here and printed; everything else stays consistent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from gateway.devstack.pidfile import PidFile
from tests.faults.redis_support import AofValkey, tear_tail
from tests.faults.support import (
    ADMIN,
    ClaimRow,
    Gateway,
    Load,
    Proc,
    Processes,
    Request,
    Sale,
    assert_consistent,
    assert_reconciled,
    attempts,
    claimgate,
    claims_in_stream,
    create_sale,
    fence_open,
    finish,
    idempotency_answers,
    ledger_claims,
    poll_during,
    process_env,
    readiness,
    seqs_behind,
    truncate_ledger,
    wait_drained,
    wait_readiness,
    wait_until,
)
from tests.helpers import token

pytestmark = [pytest.mark.fault]

LIMIT = 2


def users(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(count)]


@dataclass
class Stack:
    """A Valkey with AOF of the test's own, a client of the checks on it, and the gateway on it, the session
    Postgres as ledger."""

    valkey: AofValkey
    rdb: Redis
    env: dict[str, str]
    database_url: str
    procs: Processes
    gateway: Gateway
    side: Path  # where a test copies the AOF folder to
    started: float = field(default_factory=time.monotonic)

    def seconds(self) -> float:
        return time.monotonic() - self.started

    async def restart(self, aof: Path | None = None) -> None:
        """Start the killed Valkey again on its port and directory (``aof``: that copy put back first, a
        rollback)."""
        if aof is not None:
            self.valkey.put_back(aof)
        self.valkey.start()  # loads the AOF
        await self.rdb.connection_pool.disconnect()  # the checks' own connections died with the old server

    def worker(self, name: str) -> Proc:
        return self.procs.worker(self.env, name, worker_claim_idle_ms="500")

    async def sale_under_load(
        self, stock: int, worker: str, requests: list[Request], phase: str
    ) -> tuple[Sale, Proc, Load, asyncio.Task[Load]]:
        """A sale of ``stock`` packs of one coupon, a worker named ``worker``, and ``requests`` sent in the
        background (answers tagged ``phase``) by a keyed load whose every request ends in a final answer: a
        transport error is sent again, and a 503 ``overloaded`` after its Retry-After."""
        sale = await create_sale(self.gateway.url, stock=stock, per_user_limit=LIMIT, pack_size=1)
        started_worker = self.worker(worker)
        load = Load(
            self.gateway.url,
            sale.activity_id,
            concurrency=24,
            keyed=True,
            retry=True,
            retry_overloaded=True,
            phase=phase,
        )
        return sale, started_worker, load, load.start(requests)

    async def wait_drained(self, worker: Proc) -> None:
        await wait_drained(self.rdb, self.database_url, [worker])

    async def ledger_ids(self, sale: Sale) -> set[str]:
        return {row.claim_id for row in await ledger_claims(self.database_url, sale.activity_id)}

    async def seqs_behind(self) -> dict[str, tuple[int, int]]:
        return await seqs_behind(self.rdb, self.database_url)

    async def assert_sold_out(self, sale: Sale) -> list[ClaimRow]:
        """``assert_consistent``, the stock all taken, each unit once (ordinals 1..stock); the ledger's rows."""
        found = await assert_consistent(self.rdb, self.database_url, sale)
        rows = await ledger_claims(self.database_url, sale.activity_id)
        assert found.stock_left == 0 and found.taken == sale.stock, found  # sold out, not over
        assert sorted(r.ordinal or 0 for r in rows) == list(range(1, sale.stock + 1)), (
            "units not 1..stock once each"
        )
        return rows


@contextlib.asynccontextmanager
async def running_stack(
    tmp_path: Path, pidfile: PidFile, database_url: str, appendfsync: str
) -> AsyncIterator[Stack]:
    """A Stack on an emptied ledger; at the end its processes are stopped, then its Valkey."""
    await truncate_ledger(database_url)
    valkey = AofValkey(tmp_path / "valkey", pidfile, appendfsync)
    procs = Processes(tmp_path, pidfile)
    rdb: Redis | None = None
    try:
        valkey.start()
        rdb = Redis.from_url(valkey.url, decode_responses=True)
        env = process_env(valkey.url, database_url)
        yield Stack(valkey, rdb, env, database_url, procs, await procs.gateway(env), tmp_path / "aof-copy")
    finally:
        if rdb is not None:
            await rdb.aclose()
        try:
            procs.stop_all()
        finally:
            valkey.stop()


StartStack = Callable[[str], Awaitable[Stack]]


@pytest.fixture
async def aof_stack(tmp_path: Path, pidfile: PidFile, migrated: str) -> AsyncIterator[StartStack]:
    """Starts the test's Stack with the ``appendfsync`` it is given; stops it at the end."""
    async with contextlib.AsyncExitStack() as running:

        async def start(appendfsync: str) -> Stack:
            return await running.enter_async_context(running_stack(tmp_path, pidfile, migrated, appendfsync))

        yield start


@pytest.mark.timeout(300)
async def test_kill_9_of_redis_in_the_safe_setting_loses_nothing_acknowledged(aof_stack: StartStack) -> None:
    stack = await aof_stack("always")
    rdb, gateway = stack.rdb, stack.gateway
    # 1400 users x 3 attempts: the third of each is refused by the per-user limit (2); then 300 more users
    # buy what is left (200) and the rest find it sold out.
    plan = attempts(users("s", 1400), 3, "k") + attempts(users("t", 300), 1, "k")
    sale, worker, load, loading = await stack.sale_under_load(3000, "w-safe", plan, "before-kill")
    try:
        await load.wait_acked(1000)
        assert not loading.done(), "the load ended before the kill"
        old_run_id = (await rdb.info("server"))["run_id"]
        load.phase = "outage"
        killed_at = time.monotonic()
        stack.valkey.kill()  # kill -9, mid-load
        acked_before_kill = [a for a in load.acked.values() if a.answered_at <= killed_at]
        await asyncio.sleep(0.5)  # the load goes on against a gateway without Redis
        await stack.restart()
        restarted_at = stack.valkey.starts[-1]

        # Straight after the restart, before the fence can matter: Redis holds everything acknowledged.
        assert (await rdb.info("server"))["run_id"] != old_run_id
        assert await stack.seqs_behind() == {}, "safe setting: Redis restarted behind the ledger"
        held = await idempotency_answers(rdb, sale, acked_before_kill)
        lost = {cid: found for cid, found in held.items() if found != cid}
        assert not lost, (
            f"{len(lost)} claims acknowledged before the kill lost by Redis, e.g. {list(lost)[:5]}"
        )

        # The fence reopens by itself: /readyz says open, and claims sent after the restart are granted
        # (a script runs on the new Redis only once the fence trusts its run id).
        await wait_readiness(gateway, fence_open, "the fence open again")
        fence_open_at = time.monotonic()
        load.phase = "after-restart"
        await wait_until(
            "a claim granted after the restart",
            lambda: any(a.sent_at > restarted_at for a in load.acked.values()) or loading.done(),
            30,
        )
        await asyncio.wait_for(loading, 120)
    finally:
        await finish(loading)

    await stack.wait_drained(worker)
    load.assert_clean(outage=True)
    outage_503 = [a for a in load.answers if a.status == 503]
    assert outage_503, f"no claim met the outage: {load.summary()}"
    assert all(killed_at <= a.answered_at for a in outage_503)
    after_restart = [a for a in load.acked.values() if a.sent_at > restarted_at]
    assert acked_before_kill and after_restart, load.summary()
    codes = Counter(a.code for a in load.final if a.status != 201)
    assert codes["limit_reached"] and codes["sold_out"], codes

    # Every acknowledged claim is in the ledger exactly once, and nothing else is (keyed retries give every
    # request one final answer, so the ledger holds exactly the acknowledged claims).
    rows = await stack.assert_sold_out(sale)
    assert Counter(r.claim_id for r in rows) == Counter(load.acked.keys()), (len(rows), len(load.acked))
    held = await idempotency_answers(rdb, sale, load.acked.values())
    assert all(cid == got for cid, got in held.items()), "an acknowledged claim's record is not in Redis"
    await assert_reconciled(stack.env)
    print(
        f"\nsafe kill -9: {len(acked_before_kill)} acknowledged before the kill, all held by the restarted "
        f"Redis; {len(outage_503)} answers 503 overloaded during the outage; fence open "
        f"{fence_open_at - restarted_at:.2f}s after the restart; {len(load.acked)} acknowledged in all "
        f"({load.summary()}); {stack.seconds():.1f}s"
    )


async def assert_fenced(gateway_url: str, activity_id: str, user: str, key: str) -> None:
    """A claim answers 503 overloaded with Retry-After: the fence holds state changes."""
    headers = {"Authorization": f"Bearer {token(user)}", "Idempotency-Key": key}
    async with httpx.AsyncClient(timeout=5) as http:
        reply = await http.post(f"{gateway_url}/v1/activities/{activity_id}/claim", headers=headers)
    assert reply.status_code == 503, reply.text
    assert reply.json()["error"] == "overloaded", reply.text
    assert reply.headers.get("retry-after"), reply.headers


@pytest.mark.short_fault
@pytest.mark.timeout(300)
async def test_rollback_of_a_drained_redis_stays_fenced_until_restore(aof_stack: StartStack) -> None:
    stack = await aof_stack("everysec")
    rdb, gateway, env = stack.rdb, stack.gateway, stack.env
    first = users("a", 450)
    sale, worker, load, loading = await stack.sale_under_load(
        1000, "w-rollback", attempts(first, 2, "a"), "before-copy"
    )
    try:
        await load.wait_acked(300)
        assert not loading.done(), "the load ended before the copy"
        copied = stack.valkey.copy_aof(stack.side)  # under load
        load.phase = "after-copy"
        tear_tail(stack.side, 9)  # and its last write torn: "EXEC" cut off the last script's block
        await asyncio.wait_for(loading, 120)
    finally:
        await finish(loading)
    load.assert_clean(outage=False)
    await stack.wait_drained(worker)
    drained = await stack.ledger_ids(sale)
    assert drained == load.acked_ids(), "the worker did not persist every acknowledged claim"
    assert load.acked_ids("before-copy") and load.acked_ids("after-copy"), load.summary()

    stack.valkey.kill()
    await stack.restart(stack.side)
    notes = stack.valkey.load_notes()
    assert notes, "Valkey loaded the torn AOF without a word"
    taken_rolled_back = await rdb.hget(f"{sale.tag}:act", "taken")
    seq_rolled_back = await rdb.get(f"{sale.tag}:seq")
    behind = await stack.seqs_behind()
    assert sale.tag in behind, f"the rolled-back Redis is not behind the ledger: {behind}"

    # The gateway notices the new run id and keeps state changes fenced, naming the partitions behind.
    fenced = await wait_readiness(
        gateway,
        lambda r: "behind the ledger" in str(r.get("fence")),
        "the fence closed on partitions behind",
    )
    assert f"in {len(behind)} partition(s)" in fenced["fence"] and "run restore" in fenced["fence"], fenced

    probes = 0

    async def probe() -> None:
        nonlocal probes
        probes += 1
        await assert_fenced(gateway.url, sale.activity_id, f"p{probes:03d}", f"p-{probes}")
        found = await readiness(gateway)
        assert "behind the ledger" in str(found.get("fence")), found

    fenced_at = time.monotonic()
    await poll_during(3.0, 0.2, probe)
    assert time.monotonic() - fenced_at >= 3.0
    # An operator's state change is refused the same way.
    async with httpx.AsyncClient(base_url=gateway.url, headers=ADMIN, timeout=5) as http:
        paused = await http.post(f"/v1/admin/activities/{sale.activity_id}/pause")
    assert paused.status_code == 503 and paused.json()["error"] == "overloaded", paused.text
    assert paused.headers.get("retry-after"), paused.headers
    # Nothing was written while fenced.
    assert await rdb.hget(f"{sale.tag}:act", "taken") == taken_rolled_back
    assert await rdb.get(f"{sale.tag}:seq") == seq_rolled_back

    restored = await claimgate(env, "restore")
    assert restored.code == 0, restored.output
    assert f"{sale.tag}: restored" in restored.output, restored.output
    await wait_readiness(gateway, fence_open, "the fence open after restore")
    assert await stack.seqs_behind() == {}

    # Sell out: the first users once more (each already holds 2: refused by its limit), then new users.
    load.phase = "after-restore"
    await asyncio.wait_for(load.run(attempts(first, 1, "c") + attempts(users("b", 200), 1, "b")), 120)
    print("\n503 after restore:", load.overloaded("after-restore"))
    load.assert_clean(outage=True)
    await stack.wait_drained(worker)

    rows = await stack.assert_sold_out(sale)
    assert Counter(r.claim_id for r in rows) == Counter(load.acked.keys()), "ledger != acknowledged claims"
    for phase in ("before-copy", "after-copy", "after-restore"):
        assert load.acked_ids(phase), phase
    refused = Counter(a.code for a in load.final if a.phase == "after-restore" and a.status != 201)
    assert refused["limit_reached"] == len(first) and refused["sold_out"], refused
    await assert_reconciled(env)
    summary = [line for line in restored.output.splitlines() if line.startswith("restored ")]
    print(
        f"\nrollback (drained): AOF copy {copied}; AOF load notes {notes}; Redis rolled back to taken "
        f"{taken_rolled_back!r} (ledger {len(drained)}); {len(behind)} partition(s) behind; {probes} claims "
        f"refused 503 while fenced; restore: {summary}; {load.summary()}; {stack.seconds():.1f}s"
    )


@pytest.mark.timeout(300)
async def test_rollback_without_a_drain_loses_exactly_the_claims_acknowledged_after_the_copy(
    aof_stack: StartStack,
) -> None:
    stack = await aof_stack("everysec")
    first = users("a", 400)
    sale, worker, load, loading = await stack.sale_under_load(
        1000, "w-before", attempts(first, 2, "a"), "before-copy"
    )
    try:
        # The worker stops first, under load: what is acknowledged from then until the copy is in the copy
        # but not in the ledger (the restarted Redis's stream still holds it).
        await load.wait_acked(150)
        assert await asyncio.to_thread(stack.procs.stop, worker) == 0, worker.tail()
        await load.wait_acked(len(load.acked) + 100)
        assert not loading.done(), "the load ended before the copy"
        # The copy is the state a machine crash leaves on disk; with no claim in flight while it is taken,
        # "acknowledged before the copy" is exact. No worker runs from here until after the restart.
        async with load.quiesced():
            persisted_at_copy = await stack.ledger_ids(sale)
            # everysec may postpone a write (not its reply) while an fsync stalls: copy once Valkey's AOF
            # buffer is in the file, so the copy holds exactly what was acknowledged before it.
            deadline = time.monotonic() + 10
            while int((await stack.rdb.info("persistence"))["aof_buffer_length"]):
                assert time.monotonic() < deadline, "Valkey's AOF buffer did not reach the file in 10 s"
                await asyncio.sleep(0.01)
            delayed_fsyncs = int((await stack.rdb.info("persistence"))["aof_delayed_fsync"])
            copied = stack.valkey.copy_aof(stack.side)
            load.phase = "after-copy"
        await asyncio.wait_for(loading, 120)
    finally:
        await finish(loading)
    load.assert_clean(outage=False)
    before_copy, after_copy = load.acked_ids("before-copy"), load.acked_ids("after-copy")
    assert before_copy and after_copy, load.summary()

    stack.valkey.kill()
    persisted = await stack.ledger_ids(sale)  # what the ledger holds at the crash
    assert persisted == persisted_at_copy, "a claim was persisted with no worker running"
    await stack.restart(stack.side)
    notes = stack.valkey.load_notes()

    # The ledger is not ahead of the copy (the worker stopped before it): the fence cannot see the loss and
    # reopens by itself; restore finds nothing behind.
    behind = await stack.seqs_behind()
    assert behind == {}, behind
    in_restored_redis = await claims_in_stream(stack.rdb, sale)
    unpersisted = before_copy - persisted
    assert unpersisted, "the worker persisted everything before the copy: nothing for the restart to drain"
    assert unpersisted <= in_restored_redis, "claims acknowledged before the copy missing from the copy"
    assert not in_restored_redis & after_copy, "the copy holds claims acknowledged after it was taken"
    await wait_readiness(stack.gateway, fence_open, "the fence open on the restarted Redis")
    restored = await claimgate(stack.env, "restore")
    assert restored.code == 0, restored.output
    assert f"{sale.tag}: level with the ledger" in restored.output, restored.output

    worker = stack.worker("w-after")
    await stack.wait_drained(worker)
    ledger = await stack.ledger_ids(sale)
    lost = load.acked_ids() - ledger
    assert lost == load.acked_ids() - persisted - in_restored_redis
    expected = after_copy - persisted
    assert lost == expected, (
        f"lost {len(lost)}, expected the {len(expected)} acknowledged after the copy that no worker "
        f"persisted; lost before the copy: {len(lost & before_copy)}; after the copy but kept: "
        f"{len(expected - lost)}"
    )
    assert not lost & before_copy
    print(
        f"\nrollback without a drain (fast setting, simulated machine crash): {len(before_copy)} claims "
        f"acknowledged before the AOF copy, {len(after_copy)} after it; {len(persisted)} persisted by the "
        f"worker at the crash ({len(unpersisted)} in the copy only, drained after the restart); "
        f"LOST {len(lost)} acknowledged claims (in neither the ledger nor the restored "
        f"Redis) = exactly the {len(expected)} acknowledged after the copy and never persisted. "
        f"AOF copy {copied}; AOF load notes {notes}; delayed fsyncs before the copy {delayed_fsyncs}"
    )

    # The sale goes on and stays consistent: the lost units are sold again, as units the ledger never held.
    load.phase = "after-restart"
    await asyncio.wait_for(load.run(attempts(first, 1, "c") + attempts(users("b", 450), 2, "b")), 120)
    # The gateway's pooled script connections died with the old server: each answers one claim 503
    # overloaded ("Redis is unreachable") before it reconnects; the load sends those again (keyed).
    load.assert_clean(outage=True)
    assert any(a.phase == "after-restart" for a in load.acked.values())
    await stack.wait_drained(worker)
    rows = await stack.assert_sold_out(sale)
    assert {r.claim_id for r in rows} == load.acked_ids() - lost
    await assert_reconciled(stack.env)
    print(f"then sold out consistently: {load.summary()}; {stack.seconds():.1f}s")
