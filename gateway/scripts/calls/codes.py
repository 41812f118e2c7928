"""Calls of the one-time code scripts: ``code_batch``, ``put_codes``, ``code_gate``, ``redeem_code``,
``code_settle``, ``retire_codes``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

from gateway.keys import ActivityKeys, CodeKeys, WalletKeys
from gateway.scripts.calls import Reply, Runs

BatchAction = Literal["reserve", "void"]
PutCodesAction = Literal["put", "drop"]


class CodeBatchKeys(NamedTuple):
    config: str
    batches: str
    seq: str
    events: str

    @classmethod
    def of(cls, act: ActivityKeys) -> CodeBatchKeys:
        return cls(act.config, act.code_batches, act.seq, act.events)


def code_batch(
    runner: Runs[Reply],
    keys: CodeBatchKeys,
    *,
    now: int,
    event_id: str,
    operator: str,
    activity_id: str,
    batch_id: str,
    count: int,
    action: BatchAction,
) -> Reply:
    return runner.run("code_batch", keys, [now, event_id, operator, activity_id, batch_id, count, action])


class PutCodesKeys(NamedTuple):
    codes: str
    batches: str
    seq: str
    events: str

    @classmethod
    def of(cls, bucket: CodeKeys) -> PutCodesKeys:
        return cls(bucket.codes, bucket.batches, bucket.seq, bucket.events)


def put_codes(
    runner: Runs[Reply],
    keys: PutCodesKeys,
    *,
    now: int,
    event_id: str,
    batch_id: str,
    batch: str,
    action: PutCodesAction,
    hashes: Sequence[str],
) -> Reply:
    """``batch``: the batch's record JSON ("" to drop)."""
    return runner.run("put_codes", keys, [now, event_id, batch_id, batch, action, ",".join(hashes)])


class CodeGateKeys(NamedTuple):
    """A failed-attempt counter (a user's or a device's) and the idempotency record beside it."""

    fails: str
    idem: str


def code_gate(
    runner: Runs[Reply],
    keys: CodeGateKeys,
    *,
    now: int,
    attempt_id: str,
    limit: int,
    window: int,
    idem_key: str,
    body_hash: str,
) -> Reply:
    return runner.run("code_gate", keys, [now, attempt_id, limit, window, idem_key, body_hash])


class RedeemCodeKeys(NamedTuple):
    codes: str
    batches: str
    counters: str
    seq: str
    events: str

    @classmethod
    def of(cls, bucket: CodeKeys) -> RedeemCodeKeys:
        return cls(bucket.codes, bucket.batches, bucket.counters, bucket.seq, bucket.events)


def redeem_code(
    runner: Runs[Reply],
    keys: RedeemCodeKeys,
    *,
    now: int,
    event_id: str,
    code_hash: str,
    user_id: str,
    device_id: str,
    blocked: bool,
    claim_id: str,
) -> Reply:
    return runner.run(
        "redeem_code", keys, [now, event_id, code_hash, user_id, device_id, "1" if blocked else "0", claim_id]
    )


class CodeSettleKeys(NamedTuple):
    fails: str
    idem: str
    seq: str
    events: str

    @classmethod
    def of(cls, gate: CodeGateKeys, wallet: WalletKeys) -> CodeSettleKeys:
        """The gate's keys and the stream of the wallet bucket it lives in."""
        return cls(gate.fails, gate.idem, wallet.seq, wallet.events)


def code_settle(
    runner: Runs[Reply],
    keys: CodeSettleKeys,
    *,
    now: int,
    event_id: str,
    attempt_id: str,
    idem_key: str,
    body_hash: str,
    idem_ttl: int,
    answer: str,
) -> Reply:
    """``idem_key``, ``body_hash``, ``answer``: "" unless a keyed success's answer is to be kept."""
    return runner.run("code_settle", keys, [now, event_id, attempt_id, idem_key, body_hash, idem_ttl, answer])


class RetireCodesKeys(NamedTuple):
    codes: str
    batches: str
    seq: str
    events: str

    @classmethod
    def of(cls, bucket: CodeKeys) -> RetireCodesKeys:
        return cls(bucket.codes, bucket.batches, bucket.seq, bucket.events)


def retire_codes(
    runner: Runs[Reply],
    keys: RetireCodesKeys,
    *,
    now: int,
    event_id: str,
    cutoff: int,
    batch_id: str,
    last: bool,
    hashes: Sequence[str],
) -> Reply:
    """``last``: the bucket's last chunk of the batch (its record leaves with it)."""
    return runner.run(
        "retire_codes", keys, [now, event_id, cutoff, batch_id, "1" if last else "0", ",".join(hashes)]
    )
