"""Operators' changes: written to Postgres first, then mirrored into Redis by a script with an event."""

from __future__ import annotations

import logging

import asyncpg
import msgspec
from redis.exceptions import RedisError

from gateway import store
from gateway.campaign import Activity, ActivityIn, Template, TemplateIn, hot_config
from gateway.ids import new_id
from gateway.keys import KeySpace
from gateway.outcomes import DomainError, Outcome
from gateway.redis_client import ScriptRunner

log = logging.getLogger(__name__)


class AdminService:
    def __init__(self, pool: asyncpg.Pool, runner: ScriptRunner, keyspace: KeySpace) -> None:
        self.pool = pool
        self.runner = runner
        self.keyspace = keyspace

    async def create_template(self, body: TemplateIn, operator: str, now: int) -> Template:
        body.check()
        template = Template(**msgspec.structs.asdict(body), id=new_id(), created_by=operator, created_at=now)
        await store.insert_template(self.pool, template)
        return template

    async def create_activity(self, body: ActivityIn, operator: str, now: int) -> Activity:
        self.runner.fence.check()  # refuse before writing anything rather than leave a definition unmirrored
        templates = await store.templates_by_id(self.pool, [item.template_id for item in body.pack])
        face = body.check(templates)
        activity = Activity(
            **msgspec.structs.asdict(body),
            id=new_id(),
            status="active",
            face_per_pack=face,
            created_by=operator,
            created_at=now,
        )
        keys = self.keyspace.activity(activity.id)
        async with self.pool.acquire() as conn, conn.transaction():
            await store.insert_activity(conn, activity, keys)
        try:
            await self.mirror_activity(activity, templates, operator, now)
        except DomainError as exc:
            # The definition is recorded; the mirror is repaired on the next read of the activity (and by
            # reconcile), so the answer is the created record, not a refusal that invites a duplicate.
            log.error("activity %s created but not yet mirrored: %s", activity.id, exc.message)
        return activity

    async def mirror_activity(
        self, activity: Activity, templates: dict[str, Template], operator: str, now: int
    ) -> Outcome:
        """Create the activity's hot config in Redis if absent (a repeat changes nothing)."""
        keys = self.keyspace.activity(activity.id)
        allow = activity.eligibility.users if activity.eligibility and activity.eligibility.users else []
        reply = await self.runner.run(
            "put_activity",
            [keys.config, keys.allow_list, keys.seq, keys.events],
            [
                now,
                new_id(),
                operator,
                activity.id,
                msgspec.json.encode(hot_config(activity, templates)),
                msgspec.json.encode(allow),
            ],
        )
        return Outcome(reply[0])

    async def live_state(self, activity: Activity, now: int) -> tuple[str, int]:
        """The activity's status and stock left as Redis holds them, mirroring it first if a crash or an
        outage left it unmirrored."""
        keys = self.keyspace.activity(activity.id)
        try:
            status, stock_left = await self.runner.control.hmget(keys.config, ["status", "stock_left"])
            if status is None:
                templates = await store.templates_by_id(self.pool, [i.template_id for i in activity.pack])
                await self.mirror_activity(activity, templates, activity.created_by, now)
                status, stock_left = await self.runner.control.hmget(keys.config, ["status", "stock_left"])
        except RedisError:
            raise DomainError(
                Outcome.OVERLOADED, "Redis is unreachable; retry shortly.", retry_after=1
            ) from None
        return str(status), int(stock_left or 0)
