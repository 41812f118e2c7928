"""Backpressure: how far the ledger is behind Redis and how full Redis is, measured in the background; past a
share of Redis's memory (or a lag, where Redis has no maxmemory or one is configured), claims and grants are shed
with ``overloaded`` and ``Retry-After`` instead of running Redis out of memory (design.md: Redis runs with
``maxmemory`` and ``noeviction``).

The lag is the number of stream entries not yet persisted: for each stream, entries not yet delivered to its
consumer group plus entries delivered and not acknowledged (``XINFO GROUPS``: ``lag`` + ``pending``), summed over
the streams polled (registered and not retired; retired streams are never measured). The list is read from
Postgres every ``LIST_REFRESH_SECONDS``; while Postgres is away the last list is kept (and the fixed wallet, code
and blocklist streams are always measured), which is exactly when the lag grows. Live streams (fixed ones,
activities whose window is open or about to open, any stream whose last measure found a lag) are measured every
round; quiet ones every ``QUIET_MEASURE_SECONDS``, their last measured lag counting in the total meanwhile. The
stats route measures every stream at once. The claim path reads only the last verdict: no Redis call of its own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from gateway import clock
from gateway.background import cancel_requested
from gateway.catalog.store import PolledStream, polled_streams
from gateway.keys import BLOCKLIST, KeySpace, Partition, partition_of_stream
from gateway.outcomes import DomainError, Outcome
from gateway.scripts.runner import RedisClient
from gateway.scripts.transport import PipelinedCommands, encode_command
from gateway.settings import ShedSettings

log = logging.getLogger(__name__)
SHED_RETRY_AFTER = 2
SHED_MESSAGE = "The gateway is shedding load; retry shortly."
# Without maxmemory Redis gives no headroom to measure: the lag then sheds at this many entries (about 4 s of
# claims at peak; set CLAIMGATE_SHED_LAG, or better maxmemory, to allow more).
FALLBACK_LAG = 100_000
REGISTRY_TIMEOUT_SECONDS = 1.0
LIST_REFRESH_SECONDS = 2.0  # how often the list of streams is read again (a new activity, a retired stream)
QUIET_MEASURE_SECONDS = 5.0  # how often a quiet stream's lag is measured


@dataclass
class StreamLag:
    stream: str
    undelivered: int
    pending: int

    @property
    def total(self) -> int:
        return self.undelivered + self.pending


_LAG_COMMANDS: dict[str, tuple[bytes, bytes]] = {}  # each stream's two commands, encoded once


async def stream_lags(polls: PipelinedCommands, streams: list[str]) -> list[StreamLag]:
    """Each stream's entries not yet persisted by its group; a stream or group not there yet counts 0."""
    calls = []
    for stream in streams:
        encoded = _LAG_COMMANDS.get(stream)
        if encoded is None:
            encoded = _LAG_COMMANDS[stream] = (
                encode_command(("XINFO", "GROUPS", stream)),
                encode_command(("XLEN", stream)),
            )
        calls.append((stream, encoded[0]))
        calls.append((stream, encoded[1]))
    replies = await polls.call_many(calls)
    lags = []
    for i, stream in enumerate(streams):
        groups, length = replies[2 * i], replies[2 * i + 1]
        if isinstance(groups, Exception) or isinstance(length, Exception):
            continue
        # Each group a flat list of field, value (RESP2, as hiredis reads it).
        found = (dict(zip(g[::2], g[1::2], strict=True)) for g in groups)
        group = next((g for g in found if g.get("name") == stream), None)
        if group is None:
            lags.append(StreamLag(stream, int(length or 0), 0))
            continue
        # lag is nil when Redis cannot tell (entries deleted in the range): count the whole stream then.
        undelivered = group.get("lag")
        lags.append(
            StreamLag(stream, int(length) if undelivered is None else int(undelivered), int(group["pending"]))
        )
    return lags


async def dead_letter_count(client: RedisClient, streams: list[str]) -> int:
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.xlen(Partition(partition_of_stream(stream)).dead_letters)
    return sum(int(n) for n in await pipe.execute())


@dataclass
class Load:
    lag: int = 0
    memory_used: int = 0
    memory_max: int = 0  # 0: Redis has no maxmemory
    measured_at: float = 0.0
    fullest: float = 0.0  # the fullest node's used / maxmemory (a hot activity fills its node first)

    @property
    def memory_fraction(self) -> float:
        if self.fullest:
            return self.fullest
        return self.memory_used / self.memory_max if self.memory_max else 0.0


@dataclass
class LoadWatch:
    settings: ShedSettings
    keyspace: KeySpace
    load: Load = field(default_factory=Load)
    shedding: str = ""  # why claims are shed now; "" when they are not
    _streams: list[PolledStream] = field(default_factory=list)  # the registry's last list (not retired)
    _listed: list[str] = field(default_factory=list)  # what is measured: that list and the fixed streams
    _live: set[str] = field(default_factory=set)  # of those, the live ones as of the last listing
    _unsettled: set[str] = field(default_factory=set)  # never measured, or a lag at the last measure
    _listed_at: float = -math.inf
    _quiet_at: float = -math.inf  # when every stream was last measured
    lags: dict[str, int] = field(default_factory=dict)  # each stream's last measured lag (its total)

    def check(self) -> None:
        """On the claim path: the last verdict, no I/O."""
        if self.shedding:  # why, with its figures, is for operators (stats, the log), not for every caller
            raise DomainError(Outcome.OVERLOADED, SHED_MESSAGE, retry_after=SHED_RETRY_AFTER)

    def fixed_streams(self) -> list[str]:
        fixed = self.keyspace.wallet_partitions() + self.keyspace.code_partitions() + [BLOCKLIST]
        return [p.events for p in fixed]

    async def refresh(self, pool: asyncpg.Pool, *, fresh: bool = False) -> None:
        """The streams measured: the registry's not retired, read again every ``LIST_REFRESH_SECONDS`` (or now,
        ``fresh``), the last list kept while Postgres is away; the fixed streams always. Which are live is
        judged here, as of now; a retired stream's last lag leaves the total."""
        mono = time.monotonic()
        if not fresh and mono - self._listed_at < LIST_REFRESH_SECONDS:
            return
        self._listed_at = mono
        try:
            async with asyncio.timeout(REGISTRY_TIMEOUT_SECONDS):
                self._streams = await polled_streams(pool)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.debug("stream registry unreadable, keeping the last list: %r", exc)
        now, fixed = clock.now(), self.fixed_streams()
        self._live = {s.stream for s in self._streams if s.live(now)} | set(fixed)
        listed = {s.stream for s in self._streams} | set(fixed)
        self._listed = sorted(listed)
        self.lags = {name: lag for name, lag in self.lags.items() if name in listed}
        self._unsettled = (self._unsettled & listed) | (listed - set(self.lags))

    async def streams(self, pool: asyncpg.Pool) -> list[str]:
        await self.refresh(pool, fresh=True)
        return list(self._listed)

    def due(self, mono: float, *, every: bool = False) -> list[str]:
        """The streams to measure this round: every one each ``QUIET_MEASURE_SECONDS`` (or ``every``), else the
        live ones, those whose last measure found a lag and those never measured."""
        if every or mono - self._quiet_at >= QUIET_MEASURE_SECONDS:
            self._quiet_at = mono
            return self._listed
        return list(self._live | self._unsettled)

    async def measure(
        self, polls: PipelinedCommands, client: RedisClient, pool: asyncpg.Pool, *, every: bool = False
    ) -> Load:
        """Measure the streams due (``every``: all of them) and Redis's memory; the verdict follows."""
        await self.refresh(pool, fresh=every)
        due = self.due(time.monotonic(), every=every)
        for stream in due:  # an unreadable stream counts 0 (as one not there yet) until it reads again
            self.lags.pop(stream, None)
        for lag in await stream_lags(polls, due):
            self.lags[lag.stream] = lag.total
            if lag.total:
                self._unsettled.add(lag.stream)
            else:
                self._unsettled.discard(lag.stream)
        memory: Any = await client.info("memory")
        nodes = (
            list(memory.values()) if "used_memory" not in memory else [memory]
        )  # a cluster answers per node
        used = sum(int(n["used_memory"]) for n in nodes)
        most = sum(int(n["maxmemory"]) for n in nodes)
        fullest = max(
            (int(n["used_memory"]) / int(n["maxmemory"]) for n in nodes if int(n["maxmemory"])), default=0.0
        )
        self.load = Load(sum(self.lags.values()), used, most, clock.now(), fullest)
        verdict = self.verdict(self.load)
        if verdict and not self.shedding:
            log.warning("shedding claims and grants: %s", verdict)
        elif self.shedding and not verdict:
            log.warning("shedding over")
        self.shedding = verdict
        return self.load

    def lag_limit(self, load: Load) -> int:
        """Entries waiting to be persisted past which claims are shed; 0: none. ``CLAIMGATE_SHED_LAG`` when set;
        else none while Redis has ``maxmemory``, since the waiting entries live in its memory and its headroom
        is what bounds them (a Postgres outage of many minutes is then served, not shed after seconds); else
        ``FALLBACK_LAG``."""
        if self.settings.lag:
            return self.settings.lag
        return 0 if load.memory_max else FALLBACK_LAG

    def verdict(self, load: Load) -> str:
        limit = self.lag_limit(load)
        if limit and load.lag > limit:
            return f"{load.lag} events wait to be persisted (limit {limit})"
        if load.memory_max and load.memory_fraction > self.settings.memory:
            return (
                f"Redis memory at {load.memory_fraction:.0%} of maxmemory (limit {self.settings.memory:.0%})"
            )
        return ""

    async def keep_measuring(self, polls: PipelinedCommands, client: RedisClient, pool: asyncpg.Pool) -> None:
        while not cancel_requested():
            try:
                await self.measure(polls, client, pool)
            except Exception as exc:  # Redis away: claims fail on their own; keep the last verdict
                log.warning("load measurement failed: %s", exc)
            await asyncio.sleep(self.settings.check_seconds)
