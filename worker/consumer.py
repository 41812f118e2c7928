"""The consumer: one ``XREADGROUP`` per stream due (pipelined), one transaction per batch, ``XACK`` after.

Which streams are due each round is the polling schedule's (``worker/polling.py``): live streams every round,
quiet ones every ``CLAIMGATE_WORKER_QUIET_POLL``, retired ones never. Entries a batch failed to commit stay in
this consumer's pending list and their streams are read again (``0`` instead of ``>``), live or quiet, until
they commit; entries a dead consumer left pending are taken over with ``XAUTOCLAIM``. A
``claimed`` event is delivered into its wallet (idempotent) before it is acknowledged, so a gateway that died
between ``claim`` and ``deliver`` still converges.

``run_worker`` runs two lanes (``CLAIMGATE_WORKER_LANES``: 2 by default, 1 reads every stream in one), each a
``Consumer`` over the same clients and consumer name reading its own streams: activities' (claims, operators'
changes) and the rest (wallets' deliveries and checkout, code buckets), so a batch of claims never waits behind a
batch of deliveries. A stream belongs to one lane only, so each lane's pending entries are its own.

``run`` overlaps two batches: while one batch's claims are delivered and its entries acknowledged (Redis), the
next is read and committed (Postgres). Nothing is acknowledged before its own commit, and a read from ``0`` (our
pending entries) waits for the batch in flight, so no entry is taken twice by one worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway import clock
from gateway.background import stop_tasks
from gateway.catalog.store import polled_streams
from gateway.claim.service import ClaimService
from gateway.keys import KeySpace, is_activity_stream
from gateway.ops_listener import OpsListener
from gateway.outcomes import DomainError
from gateway.scripts import ledger_check
from gateway.scripts.fence import Fence
from gateway.scripts.runner import RedisClient, ScriptRunner
from gateway.services import Clients, register_fixed_streams
from gateway.settings import Settings
from worker import sink
from worker.dead_letters import bury
from worker.events import Entry
from worker.faults import crash_point, stalled
from worker.housekeeping import Housekeeping
from worker.operations import operations
from worker.polling import Schedule, StreamReads, ensure_group, ensure_group_unless_retired
from worker.trim import trim_unsettled

log = logging.getLogger(__name__)
STREAM_REFRESH_SECONDS = 2.0
# Postgres or Redis away, or the fence closed: the batch stays pending and is retried with backoff.
# (Anything else unexpected is logged and retried the same way rather than ending the worker.)
TRANSIENT = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    RedisConnectionError,
    RedisTimeoutError,
    DomainError,
)
MAX_BACKOFF_SECONDS = 5.0
HELD_RELEASE_SECONDS = 1.0  # how often a lane applies held entries whose claim another committed unseen


DELIVERING = sink.DELIVERING
DELIVER_AT_ONCE = (
    32  # deliveries in flight at once (the runner's slots: 64 by default, shared with the sweeps)
)


def is_other_stream(stream: str) -> bool:
    return not is_activity_stream(stream)


@dataclass
class Batch:
    """Entries read and committed, not yet delivered and acknowledged."""

    entries: list[Entry]
    written: sink.Written


@dataclass
class Consumer:
    settings: Settings
    redis: Clients
    pool: asyncpg.Pool
    claims: ClaimService
    streams: list[str] = field(default_factory=list)  # the lane's streams polled (not retired)
    persisted: int = 0
    _streams_at: float = 0.0
    _trimmed_at: float = 0.0
    trimmed: int = 0
    housekeeping: Housekeeping | None = None  # on one lane only: the sweeps and the ledger's pruning
    _released_at: float = 0.0
    failures: dict[tuple[str, str], int] = field(default_factory=dict)
    dead_lettered: int = 0
    conflicts: int = 0
    _settling: asyncio.Task[None] | None = None  # the batch ``run`` delivers and acknowledges meanwhile
    lane: Callable[[str], bool] | None = None  # the streams this consumer reads (None: every stream)
    plan: Schedule = field(init=False)  # each lane its own (``dataclasses.replace`` makes a new one)
    reader: StreamReads = field(init=False)

    def __post_init__(self) -> None:
        worker = self.settings.worker
        self.plan = Schedule(worker.quiet_poll_seconds, worker.claim_idle_ms / 2000)
        self.reader = StreamReads(self.redis.polls, worker.name, worker.batch_size)

    @property
    def reread_pending(self) -> bool:
        """Whether some stream is to be read from ``0`` (may hold entries pending for us)."""
        return bool(self.plan.ours)

    @reread_pending.setter
    def reread_pending(self, value: bool) -> None:
        """True: every stream of the lane is read from ``0`` next; False: none."""
        if value:
            self.plan.suspect(self.streams)
        else:
            self.plan.ours.clear()

    @property
    def name(self) -> str:
        return self.settings.worker.name

    @property
    def client(self) -> RedisClient:
        """Stream reads and acknowledgements go through the control client; scripts through the runner."""
        return self.redis.control

    @property
    def runner(self) -> ScriptRunner:
        return self.redis.runner

    async def refresh_streams(self) -> None:
        """The lane's streams not retired, with their windows (a revived stream is back from here on)."""
        lanes: dict[Callable[[str], bool] | None, bool] = {is_activity_stream: True, is_other_stream: False}
        polled = await polled_streams(self.pool, activities=lanes.get(self.lane))
        known = [s for s in polled if self.lane is None or self.lane(s.stream)]
        for stream in self.plan.update(known, clock.now(), time.monotonic()):
            await ensure_group(self.client, stream)
        self.streams = [s.stream for s in known]
        self._streams_at = time.monotonic()

    @property
    def lane_name(self) -> str:
        if self.lane is is_activity_stream:
            return "activities"
        return "all" if self.lane is None else "others"

    async def read(self) -> list[Entry]:
        """The streams due: our own pending entries where there may be some (after a failure or a restart),
        else new ones; when only pending reads were due and found nothing, new ones at once."""
        if stalled(self.lane_name):
            return []
        mono = time.monotonic()
        reads = self.plan.reads(mono)
        try:
            found, missing = await self.reader.read(reads)
        except BaseException:  # a lost reply may have delivered entries to us
            self.plan.suspect([stream for stream, _ in reads])
            raise
        cleared = self.plan.read(reads, found, mono)
        for stream in missing:
            await ensure_group_unless_retired(self.client, stream)
        if cleared and not found:
            return await self.read()
        return [entry for entries in found.values() for entry in entries]

    async def autoclaim(self) -> None:
        """Take over entries any consumer (this one too, after a lost reply) left pending longer than
        ``claim_idle_ms``, on the streams due; those where some were taken are read from ``0`` next."""
        due = self.plan.autoclaims(time.monotonic())
        if not due:
            return
        try:
            taken = await self.reader.autoclaim(due, self.settings.worker.claim_idle_ms)
        except BaseException:
            self.plan.suspect(due)
            raise
        self.plan.suspect(taken)

    async def deliver_claims(self, entries: list[Entry]) -> None:
        """Each claim's coupons into its wallet, ``DELIVER_AT_ONCE`` at a time: a round over many streams holds
        thousands, more than the runner lets wait for a slot."""
        now = int(clock.now())
        claimed = [(e, event) for e in entries if isinstance(event := e.event, DELIVERING)]
        for start in range(0, len(claimed), DELIVER_AT_ONCE):
            # The answer as the script wrote it: deliver records it byte for byte.
            await asyncio.gather(
                *(
                    self.claims.deliver(event.user_id, event.activity_id, e.fields["answer"], now=now)
                    for e, event in claimed[start : start + DELIVER_AT_ONCE]
                )
            )

    async def ack(self, entries: list[Entry]) -> None:
        by_stream: dict[str, list[str]] = {}
        for entry in entries:
            by_stream.setdefault(entry.stream, []).append(entry.entry_id)
        pipe = self.client.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            pipe.xack(stream, stream, *ids)
        await pipe.execute()

    async def count_failures(self, entries: list[Entry], failed: dict[tuple[str, str], str]) -> None:
        """An entry that failed on its own stays pending; after ``dead_after`` failures it is dead-lettered."""
        if not failed:
            return
        self.plan.suspect({stream for stream, _ in failed})
        for entry in entries:
            key = (entry.stream, entry.entry_id)
            if key not in failed:
                continue
            count = self.failures.get(key, 0) + 1
            if count >= self.settings.worker.dead_after:
                await bury(self.client, entry, failed[key], count)
                self.failures.pop(key, None)
                self.dead_lettered += 1
                log.error(
                    "dead-lettered %s %s after %d failures: %s",
                    entry.stream,
                    entry.entry_id,
                    count,
                    failed[key],
                )
            else:
                self.failures[key] = count

    async def step(self) -> int:
        """Read, persist, deliver, acknowledge one batch; the number of entries acknowledged."""
        batch = await self.persist()
        if batch is None:
            return 0
        await self.settle(batch)
        return len(batch.entries)

    async def persist(self) -> Batch | None:
        """The housekeeping that is due, then read one batch and commit it (None: nothing to read)."""
        now = time.monotonic()
        if now - self._streams_at > STREAM_REFRESH_SECONDS:
            await self.refresh_streams()
        await self.autoclaim()
        if now - self._trimmed_at > self.settings.worker.trim_seconds:
            self.trimmed += await trim_unsettled(self.client, self.plan)
            self._trimmed_at = now
        if self.housekeeping is not None:
            await self.housekeeping.run_due()
        if self.reread_pending:
            await self.settled()  # a read from 0 would return the batch in flight again
        if now - self._released_at > HELD_RELEASE_SECONDS:
            await self.release_held()
        entries = await self.read()
        if not entries:
            return None
        try:
            async with self.pool.acquire() as conn:
                written = await sink.write(conn, entries)
            crash_point("after_commit")
        except BaseException:
            self.plan.suspect({entry.stream for entry in entries})
            raise
        return Batch(entries, written)

    async def release_held(self) -> None:
        """Entries held for a claim that another lane committed while this one looked (each unseen by the
        other): applied now rather than with the next batch."""
        self._released_at = time.monotonic()
        async with self.pool.acquire() as conn:
            await sink.release_held(conn)

    async def settle(self, batch: Batch) -> None:
        """Deliver a committed batch's claims, acknowledge what was written, count what failed."""
        entries, written = batch.entries, batch.written
        try:
            await self.deliver_claims(written.deliverable(entries))
            await self.ack(written.settled(entries))
            await self.count_failures(entries, written.failed)
        except BaseException:
            self.plan.suspect({entry.stream for entry in entries})
            raise
        self.conflicts += len(written.conflicts)
        self.persisted += len(entries)

    async def settled(self) -> None:
        """Wait for the batch in flight, if any; its failure is raised here."""
        settling, self._settling = self._settling, None
        if settling is not None:
            await settling

    async def overlapped_step(self) -> int:
        """``step`` with the previous batch's settling running while this one is read and committed."""
        try:
            batch = await self.persist()
            await self.settled()
        except BaseException:
            await self.abandon_settling()
            raise
        if batch is None:
            return 0
        self._settling = asyncio.create_task(self.settle(batch))
        return len(batch.entries)

    async def abandon_settling(self) -> None:
        """After a failure: let the batch in flight finish or fail (what it did not acknowledge stays pending)."""
        settling, self._settling = self._settling, None
        if settling is not None:
            with contextlib.suppress(Exception):
                await settling

    def lanes(self) -> list[Consumer]:
        """This consumer split in two over its clients: activities' streams, then every other stream (with the
        housekeeping). Each lane has its own streams, batch in flight and failure counts."""
        return [
            dataclasses.replace(self, lane=is_activity_stream, streams=[], failures={}, housekeeping=None),
            dataclasses.replace(self, lane=is_other_stream, streams=[], failures={}),
        ]

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self.loop(stop)
        finally:
            await self.abandon_settling()

    async def loop(self, stop: asyncio.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            try:
                done = await self.overlapped_step()
                backoff = 0.1
            except Exception as exc:
                if isinstance(exc, TRANSIENT):
                    log.warning("batch not persisted, will retry in %.1fs: %r", backoff, exc)
                else:
                    log.exception("unexpected error; the batch stays pending, retry in %.1fs", backoff)
                await _sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            pause = self.plan.pause(done, self.settings.worker.idle_sleep_seconds)
            if pause:
                await _sleep_or_stop(stop, pause)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def start_consumer(settings: Settings, fence: Fence | None = None) -> Consumer:
    redis = await Clients.open(settings, fence)
    # A batch is acknowledged only after its COMMIT is on disk, whatever the server's default.
    pool = await asyncpg.create_pool(
        settings.postgres.url, min_size=0, max_size=4, timeout=5, server_settings={"synchronous_commit": "on"}
    )
    keyspace = KeySpace(settings.redis.wallet_buckets, settings.redis.code_buckets)
    try:
        await register_fixed_streams(pool, keyspace)
        await ledger_check.check(redis.control, pool, redis.fence)
    except (OSError, asyncpg.PostgresError) as exc:
        log.warning("Postgres unreachable at start: %r", exc)
    claims = ClaimService(redis.runner, keyspace, settings.claim.idempotency_ttl_seconds)
    return Consumer(
        settings, redis, pool, claims, housekeeping=Housekeeping.of(settings, pool, redis, keyspace)
    )


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    consumer = await start_consumer(settings)
    watcher = asyncio.create_task(
        ledger_check.watch(
            consumer.client,
            consumer.pool,
            consumer.redis.fence,
            scripts=consumer.redis.scripts,
            max_skew=settings.claim.max_clock_skew_seconds,
        )
    )
    lanes = consumer.lanes() if settings.worker.lanes > 1 else [consumer]
    ops = OpsListener(
        settings.ops.host, settings.ops.worker_port, operations(consumer, lanes), asyncio.get_running_loop()
    )
    if settings.ops.worker_port:
        ops.start()
    try:
        await asyncio.gather(*(lane.run(stop) for lane in lanes))
    finally:
        await asyncio.to_thread(ops.stop)
        await stop_tasks([watcher])
        await consumer.redis.close()
        await consumer.pool.close()
