"""Operators' changes: definitions written to Postgres first then mirrored into Redis; changes to hot state
(status, stock, window, limits) made by a script that appends the event the audit is written from. A change to a
retired activity brings its partition back first (``gateway/catalog/retirement.py``); reads of one answer from the
ledger."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import msgspec

from gateway.catalog import store
from gateway.catalog.campaign import (
    Activity,
    ActivityIn,
    BlocklistChange,
    StockChange,
    Template,
    TemplateIn,
    hot_config,
)
from gateway.catalog.retirement import REVIVE_ATTEMPTS, Reviver, retired_reply
from gateway.ids import new_id
from gateway.keys import BLOCKLIST, KeySpace
from gateway.outcomes import DomainError, Outcome
from gateway.scripts.calls import catalog as calls
from gateway.scripts.runner import ScriptRunner

log = logging.getLogger(__name__)


class AdminService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        runner: ScriptRunner,
        keyspace: KeySpace,
        changed: Callable[[str], None] | None = None,
        reviver: Reviver | None = None,
    ) -> None:
        self.pool = pool
        self.runner = runner
        self.keyspace = keyspace
        self.changed = changed  # told each activity an operator changed (the sold-out marks)
        self.reviver = reviver or Reviver(pool, runner, keyspace)

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
        allow = activity.eligibility.users if activity.eligibility and activity.eligibility.users else []
        reply = await calls.put_activity(
            self.runner,
            calls.PutActivityKeys.of(self.keyspace.activity(activity.id)),
            now=now,
            event_id=new_id(),
            operator=operator,
            activity_id=activity.id,
            config=msgspec.json.encode(hot_config(activity, templates)),
            allow_users=msgspec.json.encode(allow),
        )
        return Outcome(reply[0])

    def _change_keys(self, activity_id: str) -> calls.ActivityChangeKeys:
        return calls.ActivityChangeKeys.of(self.keyspace.activity(activity_id))

    async def _change(
        self, activity_id: str, operator: str, now: int, call: Callable[[], Awaitable[list[Any]]]
    ) -> list[Any]:
        """Run one of the operators' change scripts (``call`` makes the call, fresh ids each time); on a retired
        activity, bring it back and run it again. Refusals become the contract's errors."""
        try:
            reply = await call()
            for _ in range(REVIVE_ATTEMPTS):
                if not retired_reply(reply):
                    break
                if await self.reviver.revive(activity_id, operator, now) is Outcome.ENDED:
                    raise DomainError(Outcome.STATE_CONFLICT)  # what the script answers an ended activity
                reply = await call()
        finally:
            if self.changed is not None:
                self.changed(activity_id)
        if retired_reply(reply):  # retired again each time, right after its revival: rare, and worth a retry
            raise DomainError(Outcome.OVERLOADED, "The activity is being brought back; retry shortly.")
        outcome = Outcome(reply[0])
        if outcome is Outcome.INVALID_REQUEST:
            raise DomainError(outcome, "ends_at: must be after starts_at", extra={"field": "ends_at"})
        if outcome not in (Outcome.OK, Outcome.REPLAY):
            raise DomainError(outcome)
        return reply

    async def set_status(self, activity_id: str, action: calls.StatusAction, operator: str, now: int) -> str:
        def call() -> Awaitable[list[Any]]:
            return calls.set_status(
                self.runner,
                self._change_keys(activity_id),
                now=now,
                event_id=new_id(),
                operator=operator,
                activity_id=activity_id,
                action=action,
            )

        reply = await self._change(activity_id, operator, now, call)
        return str(reply[1])

    async def restock(self, activity: Activity, change: StockChange, operator: str, now: int) -> int:
        """The budget and a pack's face value come from the definition, which never changes."""

        def call() -> Awaitable[list[Any]]:
            return calls.restock(
                self.runner,
                self._change_keys(activity.id),
                now=now,
                event_id=new_id(),
                operator=operator,
                activity_id=activity.id,
                delta=change.delta,
                face=activity.face_per_pack,
                budget=activity.budget,
            )

        reply = await self._change(activity.id, operator, now, call)
        return int(reply[1])

    async def patch(self, activity_id: str, changes: dict[str, object], operator: str, now: int) -> None:
        """``changes`` from ``ActivityPatch.changes()``: validated, at least one field."""

        def call() -> Awaitable[list[Any]]:
            return calls.patch_activity(
                self.runner,
                self._change_keys(activity_id),
                now=now,
                event_id=new_id(),
                operator=operator,
                activity_id=activity_id,
                changes=msgspec.json.encode(changes),
            )

        await self._change(activity_id, operator, now, call)

    async def live_state(self, activity: Activity, now: int) -> dict[str, str]:
        """The activity's hot config as Redis holds it (the authority for status, window, limits and stock),
        mirroring it first if a crash or an outage left it unmirrored; a retired activity's from the ledger (what
        Redis held when it left), without bringing it back."""
        hot = await self._hot(activity.id)
        if hot == {}:
            templates = await store.templates_by_id(self.pool, [i.template_id for i in activity.pack])
            await self.mirror_activity(activity, templates, activity.created_by, now)
            hot = await self._hot(activity.id)
        if hot is None:
            return await self.reviver.ledger_config(activity.id, now)
        return hot

    async def _hot(self, activity_id: str) -> dict[str, str] | None:
        """The config Redis holds; None when the partition is retired (no config, its marker there)."""
        keys = self.keyspace.activity(activity_id)
        hot = await self.runner.control.hgetall(keys.config)
        if not hot and await self.runner.control.exists(keys.retired):
            return None
        return {str(k): str(v) for k, v in hot.items()}

    async def change_blocklist(
        self, action: calls.BlocklistAction, change: BlocklistChange, operator: str, now: int
    ) -> int:
        change.check()
        reply = await calls.blocklist(
            self.runner,
            calls.BlocklistChangeKeys.of(),
            now=now,
            event_id=new_id(),
            operator=operator,
            action=action,
            users=msgspec.json.encode(change.users),
            devices=msgspec.json.encode(change.devices),
        )
        return int(reply[1]) if reply[0] == Outcome.OK else 0

    async def blocklist_entries(self) -> list[BlocklistEntry]:
        """Every entry, newest first (then by kind and id): Redis holds the list the gateways enforce."""
        raw = await self.runner.control.hgetall(BLOCKLIST.entries)
        entries = []
        for name, value in raw.items():
            kind, _, ident = str(name).partition(":")
            record = msgspec.json.decode(value, type=_EntryRecord)
            entries.append(BlocklistEntry(kind=kind, id=ident, added_at=record.added_at, by=record.by))
        entries.sort(key=lambda e: (-e.added_at, e.kind, e.id))
        return entries


class _EntryRecord(msgspec.Struct):
    added_at: int
    by: str


class BlocklistEntry(msgspec.Struct):
    kind: str
    id: str
    added_at: int
    by: str

    @property
    def cursor(self) -> str:
        return f"{self.added_at}.{self.kind}.{self.id}"
