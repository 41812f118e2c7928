"""Calls of the claim scripts: ``claim``, ``deliver``, ``grant_call``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

from gateway.keys import ActivityKeys, WalletKeys
from gateway.scripts.calls import Reply, Runs

TAG_SEPARATOR = "\x1f"  # the claim script splits the token's tags on it
ClaimMode = Literal["claim", "grant"]
GrantCallStep = Literal["open", "settle"]


class ClaimKeys(NamedTuple):
    config: str
    user_counts: str
    dev_counts: str
    allow: str
    idem: str
    retired: str
    seq: str
    events: str

    @classmethod
    def of(cls, act: ActivityKeys, idem: str | None = None) -> ClaimKeys:
        """``idem``: the Idempotency-Key record's key; the partition's placeholder for a call without one."""
        return cls(
            act.config,
            act.user_counts,
            act.device_counts,
            act.allow_list,
            idem or act.no_idempotency,
            act.retired,
            act.seq,
            act.events,
        )


def claim(
    runner: Runs[Reply],
    keys: ClaimKeys,
    *,
    now: int,
    activity_id: str,
    user_id: str,
    device_id: str,
    channel: str,
    blocked: bool,
    idem_key: str,
    body_hash: str,
    idem_ttl: int,
    claim_id: str,
    event_id: str,
    reg: int | None,
    orders: int | None,
    tags: Sequence[str],
    mode: ClaimMode,
    operator: str,
) -> Reply:
    return runner.run(
        "claim",
        keys,
        [
            now,
            activity_id,
            user_id,
            device_id,
            channel,
            "1" if blocked else "0",
            idem_key,
            body_hash,
            idem_ttl,
            claim_id,
            event_id,
            "" if reg is None else reg,
            "" if orders is None else orders,
            TAG_SEPARATOR.join(tags),
            mode,
            operator,
        ],
    )


class DeliverKeys(NamedTuple):
    coupons: str
    index: str  # type: ignore[assignment]  # the header's name; it hides tuple.index, which nothing here calls
    expiring: str
    seq: str
    events: str

    @classmethod
    def of(cls, wallet: WalletKeys, user_id: str) -> DeliverKeys:
        return cls(wallet.coupons, wallet.user_index(user_id), wallet.expiring, wallet.seq, wallet.events)


def deliver(
    runner: Runs[Reply],
    keys: DeliverKeys,
    *,
    now: int,
    event_id: str,
    user_id: str,
    activity_id: str,
    answer: str,
) -> Reply:
    return runner.run("deliver", keys, [now, event_id, user_id, activity_id, answer])


class GrantCallKeys(NamedTuple):
    record: str
    results: str
    seq: str
    events: str

    @classmethod
    def of(cls, act: ActivityKeys, operator: str, key: str) -> GrantCallKeys:
        """The keyed grant call ``key`` of ``operator``: its record and its users' results."""
        return cls(act.grant_call(operator, key), act.grant_results(operator, key), act.seq, act.events)


def grant_call(
    runner: Runs[Reply],
    keys: GrantCallKeys,
    *,
    now: int,
    event_id: str,
    operator: str,
    activity_id: str,
    body_hash: str,
    ttl: int,
    step: GrantCallStep,
    users: int | None,
    results: str,
) -> Reply:
    """``users`` and ``results``: None and "" to open the call."""
    return runner.run(
        "grant_call",
        keys,
        [now, event_id, operator, activity_id, body_hash, ttl, step, "" if users is None else users, results],
    )
