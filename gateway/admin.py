"""Operators' changes: written to Postgres first, then mirrored into Redis by a script with an event."""

from __future__ import annotations

import asyncpg
import msgspec

from gateway import store
from gateway.campaign import Activity, ActivityIn, Template, TemplateIn, hot_config
from gateway.ids import new_id
from gateway.keys import KeySpace
from gateway.outcomes import Outcome
from gateway.redis_client import ScriptRunner


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
        await self.mirror_activity(activity, templates, operator, now)
        return activity

    async def mirror_activity(
        self, activity: Activity, templates: dict[str, Template], operator: str, now: int
    ) -> Outcome:
        """Create the activity's hot config in Redis if absent (reconcile repeats this after a crash)."""
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

    async def live_status(self, activity: Activity) -> dict[str, str]:
        keys = self.keyspace.activity(activity.id)
        status, stock_left, taken = await self.runner.client.hmget(
            keys.config, ["status", "stock_left", "taken"]
        )
        return {
            "status": str(status or "unmirrored"),
            "stock_left": str(stock_left or 0),
            "taken": str(taken or 0),
        }
