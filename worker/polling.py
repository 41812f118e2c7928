"""Which streams a lane reads when: the polling schedule, so an idle deployment's cost grows with the streams that
have work, not with every activity ever created.

A stream is *live* when work is expected on it: a fixed stream (wallet and code buckets, the blocklist), an
activity not ended whose window is open or opens within a minute (``PolledStream.live``), or one that returned
entries within ``BUSY_SECONDS``. Live streams are read every round of the lane's loop; a round that found nothing
is followed by a pause that grows from ``CLAIMGATE_WORKER_IDLE_SLEEP`` (50 ms) to ``IDLE_PAUSE_MAX_SECONDS``
while the lane stays idle (the wallet and code buckets alone are 129 live streams by default). Every other stream is
*quiet*: the quiet ones are read together at most every ``quiet_poll_seconds`` (``CLAIMGATE_WORKER_QUIET_POLL``,
2 s), so a late grant to an ended activity is still persisted within about that. Retired streams are not in the
list at all (``gateway.catalog.store.polled_streams``); a revived one is back in it at the next refresh.

A stream that may hold entries pending for this consumer (at start, after a failure, a lost reply, or entries
taken over by ``XAUTOCLAIM``) is read from ``0``, live or quiet, every round until such a read comes back empty.
``XAUTOCLAIM`` runs on live streams every ``claim_idle_ms / 2`` and on quiet ones no more often than they are
read; trimming touches only streams that returned entries since a trim that left nothing pending.

The commands go through ``PipelinedCommands`` (one write per node, hiredis replies), each encoded once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ResponseError

from gateway.catalog.store import PolledStream
from gateway.keys import ActivityKeys, is_activity_partition, partition_of_stream
from gateway.scripts.runner import RedisClient
from gateway.scripts.transport import PipelinedCommands, encode_command
from worker.events import Entry

BUSY_SECONDS = 30.0  # a stream that returned entries this recently is live, whatever its window
IDLE_PAUSE_MAX_SECONDS = (
    0.25  # the longest pause between a lane's rounds once it has found nothing for a while
)
PENDING = "0"  # a read of our own pending entries (from the start of our pending list)
NEW = ">"  # a read of entries never delivered to the group
MIN_COUNT = 10  # the fewest entries a read asks of one stream, however many streams a round reads


async def ensure_group(client: RedisClient, stream: str) -> None:
    """The stream's consumer group (named as the stream), reading from the start so nothing is skipped."""
    try:
        await client.xgroup_create(stream, stream, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def ensure_group_unless_retired(client: RedisClient, stream: str) -> bool:
    """``ensure_group``, except for a retired activity's stream (its marker in Redis): the retire sweep deleted it,
    and making it again would leave an empty stream and group behind for every activity retired while a lane still
    had it in its list (until the next refresh drops it). False when it was left alone."""
    partition = partition_of_stream(stream)
    if is_activity_partition(partition) and await client.exists(ActivityKeys(partition).retired):
        return False
    await ensure_group(client, stream)
    return True


@dataclass
class Schedule:
    """The reading plan of one lane: pure bookkeeping; times are passed in (``now`` the wall clock for
    windows, ``mono`` a monotonic clock for cadences), so tests can move both."""

    quiet_seconds: float
    autoclaim_seconds: float
    streams: dict[str, PolledStream] = field(default_factory=dict)
    live: set[str] = field(default_factory=set)
    ours: set[str] = field(default_factory=set)  # may hold entries pending for us: read from "0"
    unread: set[str] = field(default_factory=set)  # new to the list, not yet read from ">": read next round
    untrimmed: set[str] = field(default_factory=set)  # entries since a trim that left nothing pending
    busy_at: dict[str, float] = field(default_factory=dict)
    quiet_read_at: float = -math.inf
    live_autoclaimed_at: float = -math.inf
    quiet_autoclaimed_at: float = -math.inf
    empty_rounds: int = 0  # rounds in a row that found nothing

    def update(self, streams: list[PolledStream], now: float, mono: float) -> list[str]:
        """The refreshed list (retired streams gone, revived ones back), sorted into live and quiet as of now
        (so a window opening or a busy stream gone quiet counts from the next refresh); the streams new to it,
        which are read from ``0`` first (a previous life may have left entries pending for us) and trimmed
        once."""
        new = [s.stream for s in streams if s.stream not in self.streams]
        self.streams = {s.stream: s for s in streams}
        for gone in set(self.busy_at) - set(self.streams):
            del self.busy_at[gone]
        self.ours &= set(self.streams)
        self.unread &= set(self.streams)
        self.untrimmed &= set(self.streams)
        self.ours.update(new)
        self.unread.update(new)
        self.untrimmed.update(new)
        self.classify(now, mono)
        return new

    def classify(self, now: float, mono: float) -> None:
        """Sort the streams into live and quiet as of now."""
        self.live = {
            name
            for name, stream in self.streams.items()
            if stream.live(now) or mono - self.busy_at.get(name, -math.inf) < BUSY_SECONDS
        }

    @property
    def quiet(self) -> list[str]:
        return [name for name in self.streams if name not in self.live]

    def reads(self, mono: float) -> list[tuple[str, str]]:
        """What to read this round, as (stream, start): ``0`` for streams that may hold entries pending for us,
        else ``>`` for the live ones, those new to the list and, when their turn has come, the quiet ones."""
        quiet_due = mono - self.quiet_read_at >= self.quiet_seconds
        if quiet_due:
            self.quiet_read_at = mono
        reads = [(name, PENDING) for name in self.ours]
        wanted = self.streams if quiet_due else (self.live | self.unread if self.unread else self.live)
        reads.extend((name, NEW) for name in wanted if name not in self.ours)
        return reads

    def read(self, reads: list[tuple[str, str]], found: set[str] | dict[str, Any], mono: float) -> bool:
        """What this round's reads brought: streams that returned entries are live (and to be trimmed); a read
        from ``0`` that found nothing clears its stream's pending mark. Whether any mark was cleared."""
        for stream in found:
            self.busy_at[stream] = mono
            self.live.add(stream)
            self.untrimmed.add(stream)
        if self.unread:
            self.unread.difference_update(stream for stream, start in reads if start == NEW)
        if not self.ours:
            return False
        cleared = [stream for stream, start in reads if start == PENDING and stream not in found]
        self.ours.difference_update(cleared)
        return bool(cleared)

    def suspect(self, streams: set[str] | list[str]) -> None:
        """These streams may hold entries pending for us (a failed batch, a lost reply): read them from ``0``."""
        self.ours.update(s for s in streams if s in self.streams)

    def autoclaims(self, mono: float) -> list[str]:
        """Streams due for ``XAUTOCLAIM``: live ones every ``autoclaim_seconds``, quiet ones no more often than
        they are read."""
        due: list[str] = []
        if mono - self.live_autoclaimed_at >= self.autoclaim_seconds:
            self.live_autoclaimed_at = mono
            due.extend(self.live)
        if mono - self.quiet_autoclaimed_at >= max(self.autoclaim_seconds, self.quiet_seconds):
            self.quiet_autoclaimed_at = mono
            due.extend(self.quiet)
        return due

    def pause(self, found: int, idle_sleep: float) -> float:
        """The pause before the next round after one that found ``found`` entries: none after a busy round;
        after empty ones ``idle_sleep`` (``CLAIMGATE_WORKER_IDLE_SLEEP``), doubling with each empty round in a
        row up to ``IDLE_PAUSE_MAX_SECONDS``, so an idle lane's rounds (each reading every live stream) cost
        a few a second rather than twenty; the first entry found brings it back to none."""
        if found:
            self.empty_rounds = 0
            return 0.0
        self.empty_rounds += 1
        longest = max(idle_sleep, IDLE_PAUSE_MAX_SECONDS)
        return min(idle_sleep * 2.0 ** min(self.empty_rounds - 1, 16), longest)

    def trimmed(self, stream: str, settled: bool) -> None:
        """A trim of ``stream``: settled (nothing pending below what was delivered) until it returns entries."""
        if settled:
            self.untrimmed.discard(stream)


@dataclass
class StreamReads:
    """Reads and take-overs of many streams in one pipelined round, each command encoded once."""

    polls: PipelinedCommands
    consumer: str
    count: int
    _encoded: dict[tuple[str, str, int], bytes] = field(default_factory=dict)
    _autoclaims: dict[str, bytes] = field(default_factory=dict)

    def command(self, stream: str, start: str, count: int) -> bytes:
        encoded = self._encoded.get((stream, start, count))
        if encoded is None:
            parts = ("XREADGROUP", "GROUP", stream, self.consumer, "COUNT", count, "STREAMS", stream, start)
            encoded = self._encoded[(stream, start, count)] = encode_command(parts)
        return encoded

    def count_of(self, reads: int) -> int:
        """Each stream's share of a round's batch (at least ``MIN_COUNT``): a round of many streams with backlogs
        stays about one batch, so its reply arrives within the timeout and its transaction stays small."""
        return max(MIN_COUNT, self.count // max(reads, 1))

    async def read(self, reads: list[tuple[str, str]]) -> tuple[dict[str, list[Entry]], list[str]]:
        """The entries of each read that found some, by stream, and the streams whose group is missing
        (``NOGROUP``). Another error reply is raised."""
        count = self.count_of(len(reads))
        replies = await self.polls.call_many(
            [(stream, self.command(stream, start, count)) for stream, start in reads]
        )
        found: dict[str, list[Entry]] = {}
        missing: list[str] = []
        for (stream, _), reply in zip(reads, replies, strict=True):
            if reply is None:  # nothing new (the usual reply of an idle round)
                continue
            if isinstance(reply, ResponseError):
                if "NOGROUP" not in str(reply):
                    raise reply
                missing.append(stream)
                continue
            entries = entries_of(stream, reply)
            if entries:
                found[stream] = entries
        return found, missing

    async def autoclaim(self, streams: list[str], idle_ms: int) -> list[str]:
        """Take over entries left pending longer than ``idle_ms`` by any consumer; the streams where some were
        (ours now: they are read from ``0``)."""
        calls = []
        for stream in streams:
            encoded = self._autoclaims.get(stream)
            if encoded is None:
                parts = ("XAUTOCLAIM", stream, stream, self.consumer, idle_ms, "0-0", "COUNT", 1000, "JUSTID")
                encoded = self._autoclaims[stream] = encode_command(parts)
            calls.append((stream, encoded))
        replies = await self.polls.call_many(calls)
        return [s for s, reply in zip(streams, replies, strict=True) if _took_over(reply)]


def entries_of(stream: str, reply: Any) -> list[Entry]:
    """An ``XREADGROUP`` reply as entries (an entry deleted while pending comes back without fields: skipped)."""
    entries: list[Entry] = []
    for _, messages in reply or []:
        for entry_id, flat in messages:
            if flat:
                entries.append(Entry(stream, entry_id, dict(zip(flat[::2], flat[1::2], strict=True))))
    return entries


def _took_over(reply: Any) -> bool:
    """An ``XAUTOCLAIM ... JUSTID`` reply (next cursor, ids taken, ids deleted) that took something."""
    return isinstance(reply, list) and len(reply) > 1 and bool(reply[1])
