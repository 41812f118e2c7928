"""Calls of the scripts that retire an ended activity's partition and bring it back: ``retire_activity``,
``revive_activity``."""

from __future__ import annotations

from typing import Literal, NamedTuple

from gateway.keys import ActivityKeys
from gateway.scripts.calls import Reply, Runs

ReviveStep = Literal["part", "finish"]


class RetireActivityKeys(NamedTuple):
    config: str
    users: str
    devices: str
    allow: str
    batches: str
    retired: str
    dead: str
    seq: str
    events: str

    @classmethod
    def of(cls, act: ActivityKeys) -> RetireActivityKeys:
        return cls(
            act.config,
            act.user_counts,
            act.device_counts,
            act.allow_list,
            act.code_batches,
            act.retired,
            act.dead_letters,
            act.seq,
            act.events,
        )


def retire_activity(
    runner: Runs[Reply], keys: RetireActivityKeys, *, now: int, cutoff: int, mark: int
) -> Reply:
    """``cutoff``: now minus the retention; ``mark``: the ledger's mark for the partition."""
    return runner.run("retire_activity", keys, [now, cutoff, mark])


class ReviveActivityKeys(NamedTuple):
    config: str
    users: str
    devices: str
    allow: str
    batches: str
    retired: str
    seq: str
    events: str

    @classmethod
    def of(cls, act: ActivityKeys) -> ReviveActivityKeys:
        return cls(
            act.config,
            act.user_counts,
            act.device_counts,
            act.allow_list,
            act.code_batches,
            act.retired,
            act.seq,
            act.events,
        )


def revive_activity(
    runner: Runs[Reply],
    keys: ReviveActivityKeys,
    *,
    step: ReviveStep,
    now: int,
    event_id: str,
    operator: str,
    at_least: int,
    payload: str,
    summary: str,
) -> Reply:
    """``payload``: JSON, the partition's state as the ledger rebuilds it; ``summary``: JSON, its counts."""
    return runner.run("revive_activity", keys, [step, now, event_id, operator, at_least, payload, summary])
