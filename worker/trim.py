"""Trimming the ledger streams: each below the oldest entry that is pending (read, not yet acknowledged) or
not yet delivered to its group, exactly (``XTRIM MINID``), never by length (``MAXLEN`` could drop entries
the worker has not persisted)."""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from gateway.scripts.runner import RedisClient
from worker.polling import Schedule


def next_id(entry_id: str) -> str:
    """The smallest stream id after ``entry_id``."""
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def trim_floor(group: dict[str, Any], pending: dict[str, Any]) -> str | None:
    """The id below which every entry is acknowledged: the oldest pending entry, else the one after the last
    delivered to the group. None when the group has been given nothing yet."""
    if pending.get("pending"):
        return str(pending["min"])
    last = str(group.get("last-delivered-id") or "0-0")
    return None if last == "0-0" else next_id(last)


async def trim_stream(client: RedisClient, stream: str) -> tuple[int, bool]:
    """Trim one stream (its group has the stream's name): the entries removed, and whether it is settled
    (nothing pending: every entry delivered to the group is gone), so a later trim has nothing to do until it
    gets entries again. A stream or group not there yet is settled."""
    try:
        groups = await client.xinfo_groups(stream)
        pending = await client.xpending(stream, stream)
    except ResponseError:  # no such stream or group yet: nothing to trim
        return 0, True
    group = next((g for g in groups if g.get("name") == stream), None)
    if group is None:
        return 0, True
    floor = trim_floor(group, pending)
    removed = 0 if floor is None else int(await client.xtrim(stream, minid=floor, approximate=False))
    return removed, not pending.get("pending")


async def trim_streams(client: RedisClient, streams: list[str]) -> int:
    """Trim every stream; the number of entries removed."""
    removed = 0
    for stream in streams:
        removed += (await trim_stream(client, stream))[0]
    return removed


async def trim_unsettled(client: RedisClient, plan: Schedule) -> int:
    """Trim the streams that got entries since a trim left them settled; the number of entries removed."""
    removed = 0
    for stream in list(plan.untrimmed):
        taken, settled = await trim_stream(client, stream)
        removed += taken
        plan.trimmed(stream, settled)
    return removed
