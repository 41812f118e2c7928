"""Trimming the ledger streams: each below the oldest entry that is pending (read, not yet acknowledged) or
not yet delivered to its group, exactly (``XTRIM MINID``), never by length (``MAXLEN`` could drop entries
the worker has not persisted)."""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from gateway.scripts.runner import RedisClient


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


async def trim_streams(client: RedisClient, streams: list[str]) -> int:
    """Trim every stream (its group has the stream's name); the number of entries removed."""
    removed = 0
    for stream in streams:
        try:
            groups = await client.xinfo_groups(stream)
            pending = await client.xpending(stream, stream)
        except ResponseError:  # no such stream or group yet: nothing to trim
            continue
        group = next((g for g in groups if g.get("name") == stream), None)
        if group is None:
            continue
        floor = trim_floor(group, pending)
        if floor is not None:
            removed += int(await client.xtrim(stream, minid=floor, approximate=False))
    return removed
