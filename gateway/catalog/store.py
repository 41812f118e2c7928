"""Postgres reads and writes of definitions (templates, activities, the stream registry)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import msgspec

from gateway.catalog.campaign import Activity, Eligibility, PackItem, Template
from gateway.keys import ActivityKeys, Partition

_TEMPLATE_COLUMNS = (
    "template_id, name, kind, amount_off, percent_off, max_off, min_spend, scope, valid_from, valid_until,"
    " valid_days, created_by, created_at"
)
_ACTIVITY_COLUMNS = (
    "activity_id, name, pack, starts_at, ends_at, stock, per_user_limit, per_device_limit, eligibility, budget,"
    " face_per_pack, status, created_by, created_at"
)


def _template(row: asyncpg.Record) -> Template:
    fields = dict(row)
    fields["id"] = fields.pop("template_id")
    fields["scope"] = list(fields["scope"])
    return Template(**{k: v for k, v in fields.items() if v is not None})


def _activity(row: asyncpg.Record) -> Activity:
    fields = dict(row)
    fields["id"] = fields.pop("activity_id")
    fields["pack"] = msgspec.json.decode(fields["pack"], type=list[PackItem])
    if fields["eligibility"] is not None:
        fields["eligibility"] = msgspec.json.decode(fields["eligibility"], type=Eligibility)
    return Activity(**{k: v for k, v in fields.items() if v is not None})


async def insert_template(conn: asyncpg.Connection | asyncpg.Pool, t: Template) -> None:
    await conn.execute(
        f"INSERT INTO templates ({_TEMPLATE_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)",
        t.id,
        t.name,
        t.kind,
        t.amount_off,
        t.percent_off,
        t.max_off,
        t.min_spend,
        t.scope,
        t.valid_from,
        t.valid_until,
        t.valid_days,
        t.created_by,
        t.created_at,
    )


async def templates_by_id(conn: asyncpg.Connection | asyncpg.Pool, ids: list[str]) -> dict[str, Template]:
    rows = await conn.fetch(f"SELECT {_TEMPLATE_COLUMNS} FROM templates WHERE template_id = ANY($1)", ids)
    return {row["template_id"]: _template(row) for row in rows}


async def list_templates(pool: asyncpg.Pool, *, before: str | None, limit: int) -> list[Template]:
    rows = await pool.fetch(
        f"SELECT {_TEMPLATE_COLUMNS} FROM templates WHERE ($1::text IS NULL OR template_id < $1)"
        " ORDER BY template_id DESC LIMIT $2",
        before,
        limit,
    )
    return [_template(row) for row in rows]


async def insert_activity(conn: asyncpg.Connection, a: Activity, keys: ActivityKeys) -> None:
    """The definition and its stream's registry entry, in the caller's transaction."""
    await conn.execute(
        f"INSERT INTO activities ({_ACTIVITY_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)",
        a.id,
        a.name,
        msgspec.json.encode(a.pack).decode(),
        a.starts_at,
        a.ends_at,
        a.stock,
        a.per_user_limit,
        a.per_device_limit,
        msgspec.json.encode(a.eligibility).decode() if a.eligibility else None,
        a.budget,
        a.face_per_pack,
        a.status,
        a.created_by,
        a.created_at,
    )
    await register_streams(conn, [keys], kind="activity")


async def register_streams(
    conn: asyncpg.Connection | asyncpg.Pool, partitions: list[Partition], *, kind: str
) -> None:
    await conn.executemany(
        "INSERT INTO streams (stream, partition, kind) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        [(p.events, p.tag, kind) for p in partitions],
    )


async def registered_streams(conn: asyncpg.Connection | asyncpg.Pool) -> list[str]:
    """Every stream ever registered, retired ones included (what recovery and the tests walk)."""
    return [row["stream"] for row in await conn.fetch("SELECT stream FROM streams ORDER BY stream")]


LIVE_LEAD_SECONDS = 60  # an activity's stream is live from a minute before its window opens


@dataclass(frozen=True, slots=True)
class PolledStream:
    """A stream the worker reads and gateways measure (not retired), with what says whether work is expected
    on it: an activity's window and status as the ledger knows them (patches and status changes applied); a
    fixed stream (wallet, code bucket, blocklist) has no window."""

    stream: str
    starts_at: int | None = None
    ends_at: int | None = None
    ended: bool = False

    def live(self, now: float) -> bool:
        """Work is expected: a fixed stream, or an activity not ended whose window is open or opens within
        ``LIVE_LEAD_SECONDS``. Any other stream is quiet (its readers poll it less often)."""
        if self.starts_at is None or self.ends_at is None:
            return True
        return not self.ended and self.starts_at - LIVE_LEAD_SECONDS <= now < self.ends_at


# The latest status change and window patch of each activity partition, from the audit (the activities row
# keeps the definition as created: design as built).
_POLLED = """
SELECT s.stream, s.kind,
       coalesce(starts.at, a.starts_at) AS starts_at,
       coalesce(ends.at, a.ends_at) AS ends_at,
       coalesce(status.now, a.status) = 'ended' AS ended
FROM streams s
LEFT JOIN activities a ON s.kind = 'activity' AND s.partition = '{a:' || a.activity_id || '}'
LEFT JOIN LATERAL (
    SELECT after->>'status' AS now FROM audit
    WHERE partition = s.partition AND action = 'set_status' ORDER BY seq DESC LIMIT 1
) status ON s.kind = 'activity'
LEFT JOIN LATERAL (
    SELECT (after->>'starts_at')::bigint AS at FROM audit
    WHERE partition = s.partition AND action = 'patch_activity' AND after ? 'starts_at' ORDER BY seq DESC LIMIT 1
) starts ON s.kind = 'activity'
LEFT JOIN LATERAL (
    SELECT (after->>'ends_at')::bigint AS at FROM audit
    WHERE partition = s.partition AND action = 'patch_activity' AND after ? 'ends_at' ORDER BY seq DESC LIMIT 1
) ends ON s.kind = 'activity'
WHERE s.retired_at IS NULL AND ($1::boolean IS NULL OR (s.kind = 'activity') = $1)
ORDER BY s.stream
"""


async def polled_streams(
    conn: asyncpg.Connection | asyncpg.Pool, *, activities: bool | None = None
) -> list[PolledStream]:
    """The streams not retired (``activities``: only activities' streams, or only the others), each with its
    activity's window and status (an activity stream whose definition is missing counts as live: nothing
    says work is not expected)."""
    polled = []
    for row in await conn.fetch(_POLLED, activities):
        if row["kind"] != "activity" or row["starts_at"] is None:
            polled.append(PolledStream(row["stream"]))
        else:
            polled.append(PolledStream(row["stream"], row["starts_at"], row["ends_at"], bool(row["ended"])))
    return polled


async def retire_stream(conn: asyncpg.Connection | asyncpg.Pool, stream: str, at: int) -> bool:
    """Stop polling ``stream`` (its partition left Redis); False when it is not registered or already
    retired (the first retirement's time is kept)."""
    done: str = await conn.execute(
        "UPDATE streams SET retired_at = $2 WHERE stream = $1 AND retired_at IS NULL", stream, at
    )
    return done == "UPDATE 1"


async def revive_stream(conn: asyncpg.Connection | asyncpg.Pool, stream: str) -> bool:
    """Poll ``stream`` again (a late change to a retired partition), from the readers' next refresh of the
    list; False when it was not retired."""
    done: str = await conn.execute(
        "UPDATE streams SET retired_at = NULL WHERE stream = $1 AND retired_at IS NOT NULL", stream
    )
    return done == "UPDATE 1"


async def get_activity(pool: asyncpg.Pool, activity_id: str) -> Activity | None:
    row = await pool.fetchrow(
        f"SELECT {_ACTIVITY_COLUMNS} FROM activities WHERE activity_id = $1", activity_id
    )
    return _activity(row) if row else None


async def list_activities(pool: asyncpg.Pool, *, before: str | None, limit: int) -> list[Activity]:
    rows = await pool.fetch(
        f"SELECT {_ACTIVITY_COLUMNS} FROM activities WHERE ($1::text IS NULL OR activity_id < $1)"
        " ORDER BY activity_id DESC LIMIT $2",
        before,
        limit,
    )
    return [_activity(row) for row in rows]


async def persisted_claims(pool: asyncpg.Pool, activity_id: str) -> int:
    """Packs of this activity the ledger holds (claims, grants, redeemed codes)."""
    count: int = await pool.fetchval("SELECT count(*) FROM claims WHERE activity_id = $1", activity_id)
    return count


async def conflicts(pool: asyncpg.Pool, activity_id: str | None = None) -> int:
    """Entries the ledger's checks refused: all of them, or one activity's."""
    count: int = await pool.fetchval(
        "SELECT count(*) FROM conflicts WHERE $1::text IS NULL OR activity = $1", activity_id
    )
    return count
