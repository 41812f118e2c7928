"""Calls of the operators' scripts: ``put_activity``, ``patch_activity``, ``set_status``, ``restock``,
``blocklist``."""

from __future__ import annotations

from typing import Literal, NamedTuple

from gateway.keys import BLOCKLIST, ActivityKeys, BlocklistKeys
from gateway.scripts.calls import Reply, Runs

StatusAction = Literal["pause", "resume", "end"]
BlocklistAction = Literal["add", "remove"]


class PutActivityKeys(NamedTuple):
    config: str
    allow: str
    retired: str
    seq: str
    events: str

    @classmethod
    def of(cls, act: ActivityKeys) -> PutActivityKeys:
        return cls(act.config, act.allow_list, act.retired, act.seq, act.events)


def put_activity(
    runner: Runs[Reply],
    keys: PutActivityKeys,
    *,
    now: int,
    event_id: str,
    operator: str,
    activity_id: str,
    config: str | bytes,
    allow_users: str | bytes,
) -> Reply:
    """``config`` and ``allow_users``: JSON, as the header describes them."""
    return runner.run("put_activity", keys, [now, event_id, operator, activity_id, config, allow_users])


class ActivityChangeKeys(NamedTuple):
    """KEYS of the scripts that change an activity's hot config: ``patch_activity``, ``set_status``, ``restock``."""

    config: str
    retired: str
    seq: str
    events: str

    @classmethod
    def of(cls, act: ActivityKeys) -> ActivityChangeKeys:
        return cls(act.config, act.retired, act.seq, act.events)


def patch_activity(
    runner: Runs[Reply],
    keys: ActivityChangeKeys,
    *,
    now: int,
    event_id: str,
    operator: str,
    activity_id: str,
    changes: str | bytes,
) -> Reply:
    return runner.run("patch_activity", keys, [now, event_id, operator, activity_id, changes])


def set_status(
    runner: Runs[Reply],
    keys: ActivityChangeKeys,
    *,
    now: int,
    event_id: str,
    operator: str,
    activity_id: str,
    action: StatusAction,
) -> Reply:
    return runner.run("set_status", keys, [now, event_id, operator, activity_id, action])


def restock(
    runner: Runs[Reply],
    keys: ActivityChangeKeys,
    *,
    now: int,
    event_id: str,
    operator: str,
    activity_id: str,
    delta: int,
    face: int,
    budget: int | None,
) -> Reply:
    return runner.run(
        "restock", keys, [now, event_id, operator, activity_id, delta, face, "" if budget is None else budget]
    )


class BlocklistChangeKeys(NamedTuple):
    users: str
    devices: str
    entries: str
    version: str
    seq: str
    events: str

    @classmethod
    def of(cls, blocklist: BlocklistKeys = BLOCKLIST) -> BlocklistChangeKeys:
        return cls(
            blocklist.users,
            blocklist.devices,
            blocklist.entries,
            blocklist.version,
            blocklist.seq,
            blocklist.events,
        )


def blocklist(
    runner: Runs[Reply],
    keys: BlocklistChangeKeys,
    *,
    now: int,
    event_id: str,
    operator: str,
    action: BlocklistAction,
    users: str | bytes,
    devices: str | bytes,
) -> Reply:
    """``users`` and ``devices``: JSON arrays of ids."""
    return runner.run("blocklist", keys, [now, event_id, operator, action, users, devices])
