"""Retired activities (design.md, "Retention"): what the gateway does with an activity whose partition left
Redis (``lua/retire_activity.lua``, run by the worker's retire sweep).

- Reads answer from the ledger (``ledger_config``: the config as ``rebuild`` makes it, what Redis held).
- A late change (a grant, a restock, a status change or a patch) first brings the partition back
  (``Reviver.revive``): the ledger's rebuild written by ``revive_activity`` (in parts, then ``finish``, which
  makes it live in one step), then the change runs. Two gateways reviving at once write the same values, and
  only while the partition is still retired; one revival per activity at a time runs in a process. An activity
  an operator ended stays retired: every change to it would be refused.
- Postgres follows the marker in Redis: ``activities.retired_at`` and the stream's ``retired_at`` are set by the
  sweep after its script, and cleared by a revival before it writes Redis and again after, so a crash between
  the two is healed by the next sweep (or the next revival) and a sweep racing a revival ends with the ledger
  saying what Redis holds (the sweep looks at the marker again after recording it).
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import msgspec

from gateway.catalog import store
from gateway.catalog.rebuild import ActivityState, activity_state, in_parts, mark_of, pairs
from gateway.ids import new_id
from gateway.keys import ActivityKeys, KeySpace
from gateway.outcomes import DomainError, Outcome
from gateway.scripts.calls import retire as calls
from gateway.scripts.runner import RedisClient, ScriptRunner

log = logging.getLogger(__name__)
RETIRED = "retired"  # the second word of a script's reply on a retired partition (claim: ended; others: state_conflict)
REVIVE_ATTEMPTS = 3  # a change that finds its activity retired again right after its revival tries this often


class ActivityRetired(DomainError):
    """The claim script found the activity's partition retired: to a user the activity has ended; a grant
    brings it back first."""

    def __init__(self) -> None:
        super().__init__(Outcome.ENDED)


def retired_reply(reply: list[object]) -> bool:
    """A change script's (or a grant's claim's) word that the partition is retired."""
    return len(reply) > 1 and reply[1] == RETIRED


async def record_retired(conn: asyncpg.Connection, activity_id: str, stream: str, at: int) -> None:
    """The ledger's record of a retirement: the activity and its stream, in one transaction."""
    async with conn.transaction():
        await conn.execute(
            "UPDATE activities SET retired_at = $2 WHERE activity_id = $1 AND retired_at IS NULL",
            activity_id,
            at,
        )
        await store.retire_stream(conn, stream, at)


async def record_live(conn: asyncpg.Connection | asyncpg.Pool, activity_id: str, stream: str) -> None:
    """The ledger's record that the partition is in Redis again: the activity and its stream (polled again from
    the readers' next refresh)."""
    await conn.execute(
        "UPDATE activities SET retired_at = NULL WHERE activity_id = $1 AND retired_at IS NOT NULL",
        activity_id,
    )
    await store.revive_stream(conn, stream)


async def is_retired(client: RedisClient, keys: ActivityKeys) -> bool:
    """The partition's marker is in Redis (a plain read; the scripts judge for themselves)."""
    return bool(await client.exists(keys.retired))


class Reviver:
    """Brings retired activities back, one revival per activity at a time in this process."""

    def __init__(self, pool: asyncpg.Pool, runner: ScriptRunner, keyspace: KeySpace) -> None:
        self.pool = pool
        self.runner = runner
        self.keyspace = keyspace
        self._running: dict[str, asyncio.Future[Outcome]] = {}

    async def ledger_config(self, activity_id: str, now: int) -> dict[str, str]:
        """The activity's hot config as the ledger rebuilds it: what Redis held when it retired."""
        state = await activity_state(self.pool, self.keyspace.activity(activity_id).tag, 0, now)
        if not state.defined:
            raise DomainError(Outcome.NOT_FOUND, "No such activity.")
        return state.config

    async def revive(self, activity_id: str, operator: str, now: int) -> Outcome:
        """Bring the partition back: ``ok`` revived now, ``replay`` live already (another hand revived it),
        ``not_found`` not retired (nothing in Redis: never mirrored), ``ended`` left retired because an operator
        ended the activity (every change to it is refused: nothing to bring back for). Callers waiting on the
        same activity share one revival; a caller cancelled leaves it running for the others."""
        running = self._running.get(activity_id)
        if running is None:
            running = asyncio.ensure_future(self._revive(activity_id, operator, now))
            self._running[activity_id] = running
            running.add_done_callback(lambda _: self._running.pop(activity_id, None))
        return await asyncio.shield(running)

    async def _revive(self, activity_id: str, operator: str, now: int) -> Outcome:
        keys = self.keyspace.activity(activity_id)
        state = await activity_state(self.pool, keys.tag, await mark_of(self.pool, keys.tag), now)
        if not state.defined:
            raise DomainError(Outcome.NOT_FOUND, "No such activity.")
        if state.config.get("status") == "ended" and await is_retired(self.runner.control, keys):
            return Outcome.ENDED
        await record_live(self.pool, activity_id, keys.events)  # before Redis: a crash after it heals itself
        outcome = await self._write(keys, state, operator, now)
        await record_live(self.pool, activity_id, keys.events)  # after the sweep's record, should one race us
        if outcome is Outcome.OK:
            log.info(
                "activity %s brought back from the ledger for %s (seq past %d)",
                activity_id,
                operator,
                state.mark,
            )
        return outcome

    async def _write(self, keys: ActivityKeys, state: ActivityState, operator: str, now: int) -> Outcome:
        bundle = calls.ReviveActivityKeys.of(keys)
        payloads: list[dict[str, object]] = [
            dict(part)
            for part in in_parts(
                users=pairs(state.users),
                devices=pairs(state.devices),
                allow=sorted(state.allow),
                batches=pairs(state.batches),
            )
        ]
        payloads[-1]["config"] = pairs(state.config)
        summary = {
            "at_least": state.mark,
            "users": len(state.users),
            "devices": len(state.devices),
            "batches": len(state.batches),
        }
        for i, payload in enumerate(payloads):
            reply = await calls.revive_activity(
                self.runner,
                bundle,
                step="finish" if i == len(payloads) - 1 else "part",
                now=now,
                event_id=new_id(),
                operator=operator,
                at_least=state.mark,
                payload=msgspec.json.encode(payload).decode(),
                summary=msgspec.json.encode(summary).decode(),
            )
            if reply[0] != Outcome.OK:
                return Outcome(reply[0])
        return Outcome.OK
