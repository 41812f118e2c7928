"""Backpressure: how far the ledger is behind Redis and how full Redis is, measured in the background; past a
share of Redis's memory (or a lag, where Redis has no maxmemory or one is configured), claims and grants are shed
with ``overloaded`` and ``Retry-After`` instead of running Redis out of memory (design.md: Redis runs with
``maxmemory`` and ``noeviction``).

The lag is the number of stream entries not yet persisted: for each stream, entries not yet delivered to its
consumer group plus entries delivered and not acknowledged (``XINFO GROUPS``: ``lag`` + ``pending``). It is
measured over every registered stream, read from Postgres each time; while Postgres is away the last list is
kept (and the fixed wallet, code and blocklist streams are always measured), which is exactly when
the lag grows. The claim path reads only the last verdict: no Redis call of its own.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from gateway import clock
from gateway.background import cancel_requested
from gateway.catalog.store import registered_streams
from gateway.keys import BLOCKLIST, KeySpace, Partition, partition_of_stream
from gateway.outcomes import DomainError, Outcome
from gateway.scripts.runner import RedisClient
from gateway.settings import ShedSettings

log = logging.getLogger(__name__)
SHED_RETRY_AFTER = 2
SHED_MESSAGE = "The gateway is shedding load; retry shortly."
# Without maxmemory Redis gives no headroom to measure: the lag then sheds at this many entries (about 4 s of
# claims at peak; set CLAIMGATE_SHED_LAG, or better maxmemory, to allow more).
FALLBACK_LAG = 100_000
REGISTRY_TIMEOUT_SECONDS = 1.0


@dataclass
class StreamLag:
    stream: str
    undelivered: int
    pending: int

    @property
    def total(self) -> int:
        return self.undelivered + self.pending


async def stream_lags(client: RedisClient, streams: list[str]) -> list[StreamLag]:
    """Each stream's entries not yet persisted by its group; a stream or group not there yet counts 0."""
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.xinfo_groups(stream)
        pipe.xlen(stream)
    replies = await pipe.execute(raise_on_error=False)
    lags = []
    for i, stream in enumerate(streams):
        groups, length = replies[2 * i], replies[2 * i + 1]
        if isinstance(groups, Exception) or isinstance(length, Exception):
            continue
        group = next((g for g in groups if g.get("name") == stream), None)
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
    _streams: list[str] = field(default_factory=list)

    def check(self) -> None:
        """On the claim path: the last verdict, no I/O."""
        if self.shedding:  # why, with its figures, is for operators (stats, the log), not for every caller
            raise DomainError(Outcome.OVERLOADED, SHED_MESSAGE, retry_after=SHED_RETRY_AFTER)

    def fixed_streams(self) -> list[str]:
        fixed = self.keyspace.wallet_partitions() + self.keyspace.code_partitions() + [BLOCKLIST]
        return [p.events for p in fixed]

    async def streams(self, pool: asyncpg.Pool) -> list[str]:
        try:
            async with asyncio.timeout(REGISTRY_TIMEOUT_SECONDS):
                self._streams = await registered_streams(pool)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.debug("stream registry unreadable, keeping the last list: %r", exc)
        return sorted(set(self._streams) | set(self.fixed_streams()))

    async def measure(self, client: RedisClient, pool: asyncpg.Pool) -> Load:
        lags = await stream_lags(client, await self.streams(pool))
        memory: Any = await client.info("memory")
        nodes = (
            list(memory.values()) if "used_memory" not in memory else [memory]
        )  # a cluster answers per node
        used = sum(int(n["used_memory"]) for n in nodes)
        most = sum(int(n["maxmemory"]) for n in nodes)
        fullest = max(
            (int(n["used_memory"]) / int(n["maxmemory"]) for n in nodes if int(n["maxmemory"])), default=0.0
        )
        self.load = Load(sum(lag.total for lag in lags), used, most, clock.now(), fullest)
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

    async def keep_measuring(self, client: RedisClient, pool: asyncpg.Pool) -> None:
        while not cancel_requested():
            try:
                await self.measure(client, pool)
            except Exception as exc:  # Redis away: claims fail on their own; keep the last verdict
                log.warning("load measurement failed: %s", exc)
            await asyncio.sleep(self.settings.check_seconds)
