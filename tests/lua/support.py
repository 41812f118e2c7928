"""Helpers for the script tests: activity configs, script calls with every ARGV spelled out (through the
gateway's call functions), snapshots."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from redis.exceptions import ResponseError

from gateway.ids import new_id
from gateway.keys import KeySpace, WalletKeys
from gateway.outcomes import DomainError, Outcome
from gateway.scripts.calls import catalog as catalog_calls
from gateway.scripts.calls import claim as claim_calls
from gateway.scripts.runner import RedisClient, ScriptRunner

DAY = 86_400
HASH_A = "a" * 32
HASH_B = "b" * 32
NOW = 1_750_000_000  # a fixed "now": scripts take time from ARGV only
DEFAULT_PACK: list[dict[str, Any]] = [{"template_id": "t1", "count": 1, "valid_days": 7}]


def activity_config(now: int = NOW, **overrides: Any) -> dict[str, Any]:
    """put_activity's ARGV[5] (as a dict): an active activity, open now, stock 10, one pack per user."""
    config: dict[str, Any] = {
        "status": "active",
        "starts_at": now - 60,
        "ends_at": now + 3600,
        "stock": 10,
        "per_user_limit": 1,
        "per_device_limit": 0,
        "elig": "",
        "pack": DEFAULT_PACK,
        "face_per_pack": 500,
    }
    config.update(overrides)
    for name in ("elig", "pack"):  # JSON text inside the config, as hot_config makes it
        if not isinstance(config[name], str):
            config[name] = json.dumps(config[name], separators=(",", ":"))
    return config


async def put_activity(
    runner: ScriptRunner,
    activity_id: str,
    config: dict[str, Any],
    *,
    allow: Sequence[str] = (),
    now: int = NOW,
    operator: str = "alice",
    event_id: str | None = None,
) -> list[Any]:
    return await catalog_calls.put_activity(
        runner,
        catalog_calls.PutActivityKeys.of(KeySpace.activity(activity_id)),
        now=now,
        event_id=event_id or new_id(),
        operator=operator,
        activity_id=activity_id,
        config=json.dumps(config),
        allow_users=json.dumps(list(allow)),
    )


@dataclass
class Claimed:
    reply: list[Any]
    claim_id: str
    event_id: str
    idem: str  # the idempotency key name KEYS[5] held (the placeholder when no key was given)

    @property
    def outcome(self) -> str:
        return str(self.reply[0])

    @property
    def answer(self) -> str:
        return str(self.reply[1])


@dataclass
class Claimer:
    """Calls the claim script with every ARGV explicit (what ClaimService builds, minus the random ids)."""

    runner: ScriptRunner
    idem_ttl: int

    async def __call__(
        self,
        activity_id: str = "act1",
        *,
        now: int = NOW,
        user: str = "u1",
        device: str = "d1",
        channel: str = "",
        blocked: bool = False,
        key: str = "",
        body: str = HASH_A,
        claim_id: str | None = None,
        event_id: str | None = None,
        reg: int | None = None,
        orders: int | None = None,
        tags: Sequence[str] = (),
        mode: claim_calls.ClaimMode = "claim",
        operator: str = "",
    ) -> Claimed:
        act = KeySpace.activity(activity_id)
        scope = operator if mode == "grant" else user
        idem = act.idempotency(scope, key) if key else act.no_idempotency
        claim_id = claim_id or new_id()
        event_id = event_id or new_id()
        reply = await claim_calls.claim(
            self.runner,
            claim_calls.ClaimKeys.of(act, idem),
            now=now,
            activity_id=activity_id,
            user_id=user,
            device_id=device,
            channel=channel,
            blocked=blocked,
            idem_key=key,
            body_hash=body,
            idem_ttl=self.idem_ttl,
            claim_id=claim_id,
            event_id=event_id,
            reg=reg,
            orders=orders,
            tags=tags,
            mode=mode,
            operator=operator,
        )
        return Claimed(reply, claim_id, event_id, idem)


async def deliver(
    runner: ScriptRunner,
    wallet: WalletKeys,
    user: str,
    activity_id: str,
    answer: str,
    *,
    now: int = NOW,
    event_id: str | None = None,
) -> list[Any]:
    return await claim_calls.deliver(
        runner,
        claim_calls.DeliverKeys.of(wallet, user),
        now=now,
        event_id=event_id or new_id(),
        user_id=user,
        activity_id=activity_id,
        answer=answer,
    )


Snapshot = dict[str, tuple[str, Any, int]]


async def snapshot(client: RedisClient, match: str = "*") -> Snapshot:
    """Every key matching ``match``: its type, its whole value and its absolute expiry (-1 when none).

    Streams include their entries, last id, entries-added and groups, so any XADD or XGROUP shows."""
    keys = sorted({key async for key in client.scan_iter(match=match, count=1000)})
    found: Snapshot = {}
    for key in keys:
        kind = await client.type(key)
        value: Any
        if kind == "string":
            value = await client.get(key)
        elif kind == "hash":
            value = await client.hgetall(key)
        elif kind == "set":
            value = sorted(await client.smembers(key))
        elif kind == "zset":
            value = await client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            info = await client.xinfo_stream(key)
            value = {
                "entries": await client.xrange(key),
                "last": info["last-generated-id"],
                "added": info["entries-added"],
                "groups": await client.xinfo_groups(key),
            }
        else:
            raise AssertionError(f"unexpected type {kind} of {key}")
        found[key] = (kind, value, await client.pexpiretime(key))
    return found


def changed(before: Snapshot, after: Snapshot) -> set[str]:
    """Keys created, deleted or modified between two snapshots."""
    return {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}


async def last_event(client: RedisClient, stream: str) -> dict[str, str]:
    entries = await client.xrevrange(stream, count=1)
    assert entries, f"{stream} has no entry"
    fields: dict[str, str] = entries[0][1]
    return fields


async def command_calls(plain: Any, *commands: str) -> int:
    """How often the node saw these commands (from clients or scripts): run, failed or rejected."""
    stats = await plain.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get(counter, 0))
        for name in commands
        for counter in ("calls", "rejected_calls", "failed_calls")
    )


@contextmanager
def script_error(match: str = "") -> Iterator[None]:
    """A script's error reply as the runner raises it: ``overloaded`` (nothing was done), with Redis's error reply
    (matching ``match``) as its cause."""
    with pytest.raises(DomainError) as refused:
        yield
    assert refused.value.outcome is Outcome.OVERLOADED, refused.value
    assert isinstance(refused.value.__cause__, ResponseError), refused.value.__cause__
    assert re.search(match, str(refused.value.__cause__)), refused.value.__cause__
