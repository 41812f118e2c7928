"""Calls of the restore scripts: ``restore_activity``, ``restore_wallet``, ``restore_codes``,
``restore_blocklist``, ``restore_record``, ``restore_finish``."""

from __future__ import annotations

from typing import Literal, NamedTuple

from gateway.keys import BLOCKLIST, ActivityKeys, BlocklistKeys, CodeKeys, Partition, WalletKeys
from gateway.scripts.calls import Reply, Runs

RestoreStep = Literal["reset", "more"]
RestoreWalletStep = Literal["reset", "user", "drop", "checkout"]


class RestoreActivityKeys(NamedTuple):
    config: str
    users: str
    devices: str
    allow: str
    batches: str
    retired: str

    @classmethod
    def of(cls, act: ActivityKeys) -> RestoreActivityKeys:
        return cls(
            act.config, act.user_counts, act.device_counts, act.allow_list, act.code_batches, act.retired
        )


def restore_activity(
    runner: Runs[Reply], keys: RestoreActivityKeys, *, step: RestoreStep, payload: str
) -> Reply:
    return runner.run("restore_activity", keys, [step, payload])


class RestoreWalletKeys(NamedTuple):
    coupons: str
    index: str  # type: ignore[assignment]  # the header's name; it hides tuple.index, which nothing here calls
    orders: str
    locks: str
    counters: str
    expiring: str
    finished: str
    done: str

    @classmethod
    def of(cls, wallet: WalletKeys, user_id: str = "") -> RestoreWalletKeys:
        """The bucket's keys around one user's index (the untouched placeholder when the step has no user)."""
        return cls(
            wallet.coupons,
            wallet.user_index(user_id),
            wallet.orders,
            wallet.locks,
            wallet.counters,
            wallet.expiring,
            wallet.finished,
            wallet.finished_orders,
        )


def restore_wallet(
    runner: Runs[Reply], keys: RestoreWalletKeys, *, step: RestoreWalletStep, payload: str
) -> Reply:
    return runner.run("restore_wallet", keys, [step, payload])


class RestoreCodesKeys(NamedTuple):
    codes: str
    batches: str
    counters: str

    @classmethod
    def of(cls, bucket: CodeKeys) -> RestoreCodesKeys:
        return cls(bucket.codes, bucket.batches, bucket.counters)


def restore_codes(runner: Runs[Reply], keys: RestoreCodesKeys, *, step: RestoreStep, payload: str) -> Reply:
    return runner.run("restore_codes", keys, [step, payload])


class RestoreBlocklistKeys(NamedTuple):
    users: str
    devices: str
    entries: str
    version: str

    @classmethod
    def of(cls, blocklist: BlocklistKeys = BLOCKLIST) -> RestoreBlocklistKeys:
        return cls(blocklist.users, blocklist.devices, blocklist.entries, blocklist.version)


def restore_blocklist(
    runner: Runs[Reply], keys: RestoreBlocklistKeys, *, step: RestoreStep, payload: str
) -> Reply:
    return runner.run("restore_blocklist", keys, [step, payload])


class RestoreRecordKeys(NamedTuple):
    """An idempotency record's key: an activity's, or a code redeem's in its wallet bucket."""

    record: str


def restore_record(runner: Runs[Reply], keys: RestoreRecordKeys, *, value: str, expires: int) -> Reply:
    return runner.run("restore_record", keys, [value, expires])


class RestoreFinishKeys(NamedTuple):
    seq: str
    events: str

    @classmethod
    def of(cls, partition: Partition) -> RestoreFinishKeys:
        return cls(partition.seq, partition.events)


def restore_finish(
    runner: Runs[Reply],
    keys: RestoreFinishKeys,
    *,
    now: int,
    event_id: str,
    operator: str,
    at_least: int,
    summary: str,
) -> Reply:
    """``summary``: JSON, what was restored, for the audit."""
    return runner.run("restore_finish", keys, [now, event_id, operator, at_least, summary])
