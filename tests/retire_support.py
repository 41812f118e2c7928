"""Builders for the retirement tests (tests/worker/test_retire_sweep.py, tests/recovery/test_retired.py): an
activity whose window ended an hour ago, with claims made while it was open (the scripts take ``now`` in ARGV),
and a sweep with a short retention."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gateway.catalog.admin import AdminService
from gateway.catalog.campaign import Activity, ActivityIn, PackItem, StockChange, TemplateIn
from gateway.catalog.retirement import Reviver
from gateway.claim.blocklist import Blocklist
from gateway.claim.grants import GrantService
from gateway.keys import ActivityKeys, KeySpace
from gateway.scripts.runner import RedisClient
from gateway.tokens import UserIdentity
from worker.consumer import Consumer
from worker.retire import RetireSweep

KEYS = KeySpace(8, 4)  # as tests.conftest.settings_env sets the buckets
RETENTION = 600  # the sweep's: an activity ended an hour ago is past it
OPERATOR = "alice"


@dataclass
class Ended:
    activity: Activity
    keys: ActivityKeys
    answers: dict[str, str] = field(default_factory=dict)  # user -> the answer of their first claim


def admin(consumer: Consumer) -> AdminService:
    return AdminService(consumer.pool, consumer.runner, KEYS)


def grants(consumer: Consumer) -> GrantService:
    ttl = consumer.settings.claim.idempotency_ttl_seconds
    reviver = Reviver(consumer.pool, consumer.runner, KEYS)
    return GrantService(consumer.runner, KEYS, consumer.claims, Blocklist(), ttl, reviver)


def sweep(consumer: Consumer) -> RetireSweep:
    return RetireSweep(consumer.pool, consumer.runner, KEYS, RETENTION)


async def ended_activity(
    consumer: Consumer, *, ended_ago: int = 3600, claims: bool = True, stock: int = 6
) -> Ended:
    """An activity that ran from 2 hours before its end to its end, ``ended_ago`` seconds ago: per-user limit 2,
    per-device limit 3, restocked by 2 while open, and (with ``claims``) claimed by u1 twice and u2 on device d1,
    and by u3 with a key on d3 while it was open. Nothing is persisted."""
    service = admin(consumer)
    now = int(time.time())
    ends_at = now - ended_ago
    template = await service.create_template(
        TemplateIn(name="t", kind="cash", amount_off=100, valid_days=30), OPERATOR, ends_at - 7200
    )
    activity = await service.create_activity(
        ActivityIn(
            name="sale",
            pack=[PackItem(template.id, 2)],
            starts_at=ends_at - 7200,
            ends_at=ends_at,
            stock=stock,
            per_user_limit=2,
            per_device_limit=3,
        ),
        OPERATOR,
        ends_at - 7200,
    )
    ended = Ended(activity, KEYS.activity(activity.id))
    await service.restock(activity, StockChange(2), OPERATOR, ends_at - 3600)
    if claims:
        for user, device, key in (
            ("u1", "d1", None),
            ("u1", "d1", None),
            ("u2", "d1", None),
            ("u3", "d3", "k3"),
        ):
            result = await consumer.claims.claim(
                activity.id, UserIdentity(user, device), now=ends_at - 1800, idempotency_key=key
            )
            ended.answers.setdefault(user, result.answer)
    return ended


async def partition_keys(client: RedisClient, keys: ActivityKeys) -> dict[str, Any]:
    """Every key of the partition Redis holds, by name, with its type (idempotency records included)."""
    found = {}
    async for key in client.scan_iter(match=f"{keys.tag}*", count=1000):
        found[str(key)] = str(await client.type(key))
    return found


async def retired_at(consumer: Consumer, ended: Ended) -> tuple[int | None, int | None]:
    """The ledger's record: the activity's retired_at and its stream's."""
    row = await consumer.pool.fetchrow(
        "SELECT a.retired_at AS activity, s.retired_at AS stream FROM activities a, streams s"
        " WHERE a.activity_id = $1 AND s.stream = $2",
        ended.activity.id,
        ended.keys.events,
    )
    assert row is not None
    return row["activity"], row["stream"]
