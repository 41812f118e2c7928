"""Builders for the reconcile and restore tests: a ledger made the way the gateway makes it (admin changes,
claims, grants, the blocklist, then the worker), and views of what Redis holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.catalog.admin import AdminService
from gateway.catalog.campaign import (
    Activity,
    ActivityIn,
    BlocklistChange,
    Eligibility,
    PackItem,
    StockChange,
    TemplateIn,
)
from gateway.catalog.retirement import Reviver
from gateway.claim.blocklist import Blocklist
from gateway.claim.grants import GrantBody, GrantService
from gateway.claim.service import ClaimResult
from gateway.keys import FENCE_CHECKED, ActivityKeys, KeySpace
from gateway.outcomes import DomainError, Outcome
from gateway.scripts.runner import RedisClient
from gateway.tokens import UserIdentity
from tests.conftest import ROOT, settings_env
from tests.worker.conftest import drain
from worker.consumer import Consumer
from worker.recovery.reconcile import Reconciler

KEYS = KeySpace(8, 4)  # as tests.conftest.settings_env sets the buckets
FIXED_PARTITIONS = 8 + 4 + 1  # wallet buckets, code buckets, the blocklist
OPERATOR = "alice"


def admin(consumer: Consumer) -> AdminService:
    return AdminService(consumer.pool, consumer.runner, KEYS)


def reconciler(consumer: Consumer, attempts: int = 1) -> Reconciler:
    return Reconciler(
        consumer.client,
        consumer.runner,
        consumer.pool,
        KEYS,
        consumer.settings.claim.idempotency_ttl_seconds,
        attempts=attempts,
        settle_seconds=0.05,
    )


async def new_activity(
    consumer: Consumer,
    *,
    stock: int = 10,
    per_user_limit: int = 1,
    per_device_limit: int | None = None,
    allow: list[str] | None = None,
    starts_at: int | None = None,
    coupons: int = 2,
    budget: int | None = None,
) -> Activity:
    """A template and an activity through the admin service (definition in Postgres, then mirrored)."""
    service = admin(consumer)
    now = int(time.time())
    template = await service.create_template(
        TemplateIn(name="t", kind="cash", amount_off=100, valid_days=3), OPERATOR, now
    )
    return await service.create_activity(
        ActivityIn(
            name="sale",
            pack=[PackItem(template.id, coupons)],
            starts_at=now - 5 if starts_at is None else starts_at,
            ends_at=max(now, starts_at or now) + 3600,
            stock=stock,
            per_user_limit=per_user_limit,
            per_device_limit=per_device_limit,
            eligibility=Eligibility(users=allow) if allow else None,
            budget=budget,
        ),
        OPERATOR,
        now,
    )


async def claim(
    consumer: Consumer, activity_id: str, user: str, device: str, key: str | None = None
) -> ClaimResult:
    return await consumer.claims.claim(
        activity_id, UserIdentity(user, device), now=int(time.time()), idempotency_key=key
    )


async def refusal(consumer: Consumer, activity_id: str, user: str, device: str) -> Outcome:
    try:
        result = await claim(consumer, activity_id, user, device)
    except DomainError as refused:
        return refused.outcome
    raise AssertionError(f"{user} was granted {result.answer}")


@dataclass
class Sale:
    """What ``build_sale`` made, for the assertions."""

    activity: Activity
    keys: ActivityKeys
    answers: dict[str, str] = field(default_factory=dict)  # keyed claims: user -> first answer
    grant_answer: bytes = b""


async def build_sale(consumer: Consumer, *, grants: bool = False) -> Sale:
    """An activity with a history: created to start later, patched before its start (moving the start to now,
    name, limits), restocked, paused and resumed, claimed (a keyed claim, a user at the limit of 2, a device
    shared by two users), optionally a keyed grant call; and the blocklist (an add, an add then a remove).
    Nothing is drained."""
    service = admin(consumer)
    now = int(time.time())
    activity = await new_activity(consumer, stock=4, per_user_limit=1, starts_at=now + 3600)
    await service.patch(
        activity.id,
        {"name": "renamed", "starts_at": now - 5, "per_user_limit": 2, "per_device_limit": 3},
        OPERATOR,
        now,
    )
    assert await service.restock(activity, StockChange(3), OPERATOR, now) == 7
    assert await service.set_status(activity.id, "pause", OPERATOR, now) == "paused"
    assert await service.set_status(activity.id, "resume", OPERATOR, now) == "active"
    sale = Sale(activity, KEYS.activity(activity.id))
    sale.answers["u1"] = (await claim(consumer, activity.id, "u1", "d1", key="k1")).answer
    await claim(consumer, activity.id, "u1", "d1")
    await claim(consumer, activity.id, "u2", "d1")
    await claim(consumer, activity.id, "u3", "d3")
    if grants:
        grant_service = GrantService(
            consumer.runner,
            KEYS,
            consumer.claims,
            Blocklist(),
            consumer.settings.claim.idempotency_ttl_seconds,
            Reviver(consumer.pool, consumer.runner, KEYS),
        )
        sale.grant_answer = await grant_service.grant(activity.id, GrantBody(["g1", "g2"]), "bob", "gk1")
    assert await service.change_blocklist(
        "add", BlocklistChange(users=["bad1"], devices=["baddev"]), OPERATOR, now
    )
    assert await service.change_blocklist("add", BlocklistChange(users=["gone"]), OPERATOR, now)
    assert await service.change_blocklist("remove", BlocklistChange(users=["gone"]), OPERATOR, now)
    return sale


async def persist(consumer: Consumer) -> int:
    return await drain(consumer)


async def marks(consumer: Consumer) -> dict[str, int]:
    return {
        row["partition"]: row["seq"] for row in await consumer.pool.fetch("SELECT * FROM partition_marks")
    }


async def redis_state(client: RedisClient) -> dict[str, tuple[str, Any, int]]:
    """Every key but the streams, seqs and the blocklist version (restore writes those anew) and the fence's
    record of checked run ids (no ledger state), with its type, value (JSON values decoded) and absolute expiry
    in ms (-1 when none)."""
    found: dict[str, tuple[str, Any, int]] = {}
    async for raw_key in client.scan_iter(match="*", count=1000):
        key = text(raw_key)
        if key.endswith((":events", ":seq", ":version", ":dead")) or key == FENCE_CHECKED:
            continue
        kind = text(await client.type(key))
        value: Any
        if kind == "string":
            value = await client.get(key)
        elif kind == "hash":
            value = await client.hgetall(key)
            if key.endswith((":coupons", ":entries")):
                value = {name: json.loads(raw) for name, raw in value.items()}
        elif kind == "set":
            value = sorted(await client.smembers(key))
        elif kind == "zset":
            value = await client.zrange(key, 0, -1, withscores=True)
        else:
            raise AssertionError(f"unexpected {kind} {key}")
        found[key] = (kind, value, await client.pexpiretime(key))
    return found


def text(value: object) -> str:
    """A reply of the tests' clients (they decode responses) as the str it is."""
    assert isinstance(value, str), value
    return value


def texts(values: object) -> list[str]:
    assert isinstance(values, list), values
    return [text(value) for value in values]


def cli(command: str, redis_url: str, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``claimgate <command>`` as a child process against the test servers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAIMGATE_")}
    env.update(settings_env(redis_url, database_url))
    return subprocess.run(
        [sys.executable, "-m", "claimgate.cli", command, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
