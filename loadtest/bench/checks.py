"""Correctness, checked in the same run: for each activity, the 201s counted == Redis ``taken`` == claims rows in
Postgres once the worker drained them == stock at creation - stock left; no user past its limit; no claim lost
(rows == granted); no entry refused by the ledger's checks (``conflicts``)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import asyncpg
import redis

from gateway.keys import EVENTS_SUFFIX, KeySpace
from loadtest.bench.catalog import Activity

OVER_LIMIT = (
    "SELECT count(*) FROM (SELECT user_id FROM claims WHERE activity_id = $1"
    " GROUP BY user_id HAVING count(*) > $2) over"
)
NAIVE_OVER_LIMIT = (
    "SELECT count(*) FROM (SELECT user_id FROM naive_claims WHERE activity_id = $1"
    " GROUP BY user_id HAVING count(*) > $2) over"
)


@dataclass
class Check:
    key: str
    activity_id: str
    granted: int  # 201s counted by the generator (or the claiming client)
    taken: int  # Redis: the config hash's taken (the naive baseline: stock - left in naive_stock)
    rows: int  # Postgres: claims rows (the naive baseline: naive_claims rows)
    stock_initial: int
    stock_left: int
    over_limit: int  # users with more claims than the activity's limit
    conflicts: int  # ledger entries refused for this activity

    @property
    def sold(self) -> int:
        return self.stock_initial - self.stock_left

    @property
    def lost(self) -> int:
        return self.granted - self.rows

    @property
    def ok(self) -> bool:
        counts_agree = self.granted == self.taken == self.rows == self.sold
        return counts_agree and self.over_limit == 0 and self.conflicts == 0

    def problem(self) -> str:
        if self.ok:
            return ""
        return (
            f"{self.key}: 201s {self.granted}, taken {self.taken}, rows {self.rows}, stock sold {self.sold},"
            f" users over the limit {self.over_limit}, conflicts {self.conflicts}"
        )


def redis_state(client: redis.Redis, activity_id: str) -> tuple[int, int]:
    """(taken, stock_left) from the activity's config hash."""
    taken, left = client.hmget(KeySpace.activity(activity_id).config, ["taken", "stock_left"])
    return int(taken or 0), int(left or 0)


async def rows_of(conn: asyncpg.Connection, activity_ids: list[str]) -> dict[str, int]:
    found = await conn.fetch(
        "SELECT activity_id, count(*) AS n FROM claims WHERE activity_id = ANY($1) GROUP BY activity_id",
        activity_ids,
    )
    counts = {row["activity_id"]: int(row["n"]) for row in found}
    return {activity_id: counts.get(activity_id, 0) for activity_id in activity_ids}


async def wait_drained(database_url: str, expected: dict[str, int], within: float) -> dict[str, int]:
    """Poll until Postgres holds ``expected`` claims rows per activity, or ``within`` seconds pass; the last counts."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + within
        while True:
            rows = await rows_of(conn, list(expected))
            if all(rows[a] >= n for a, n in expected.items()) or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def check_all(
    database_url: str, client: redis.Redis, activities: list[Activity], naive: list[Activity]
) -> list[Check]:
    conn = await asyncpg.connect(database_url)
    try:
        checks: list[Check] = []
        rows = await rows_of(conn, [a.id for a in activities])
        for activity in activities:
            taken, left = redis_state(client, activity.id)
            checks.append(
                Check(
                    activity.key,
                    activity.id,
                    activity.granted or 0,
                    taken,
                    rows[activity.id],
                    activity.stock,
                    left,
                    int(await conn.fetchval(OVER_LIMIT, activity.id, activity.per_user_limit)),
                    int(
                        await conn.fetchval("SELECT count(*) FROM conflicts WHERE activity = $1", activity.id)
                    ),
                )
            )
        for activity in naive:
            left = int(
                await conn.fetchval('SELECT "left" FROM naive_stock WHERE activity_id = $1', activity.id)
            )
            count = int(
                await conn.fetchval("SELECT count(*) FROM naive_claims WHERE activity_id = $1", activity.id)
            )
            checks.append(
                Check(
                    activity.key,
                    activity.id,
                    activity.granted or 0,
                    activity.stock - left,
                    count,
                    activity.stock,
                    left,
                    int(await conn.fetchval(NAIVE_OVER_LIMIT, activity.id, activity.per_user_limit)),
                    0,
                )
            )
        return checks
    finally:
        await conn.close()


def unsettled_entries(client: redis.Redis) -> int:
    """Entries of every event stream not yet read and acknowledged by the worker's group (its lag + pending)."""
    total = 0
    for stream in client.scan_iter(match="*" + EVENTS_SUFFIX, count=1000, _type="stream"):
        groups = client.xinfo_groups(stream)
        if not groups:
            total += int(client.xlen(stream))
            continue
        last = client.xinfo_stream(stream)["last-generated-id"]
        for group in groups:
            lag = group.get("lag")
            if lag is None:  # undeterminable (entries deleted in between): caught up when at the last id
                lag = 0 if group["last-delivered-id"] == last else 1
            total += int(lag) + int(group["pending"])
    return total


def wait_settled(client: redis.Redis, within: float) -> int:
    """Poll until every event stream is read and acknowledged (or ``within`` seconds pass); what is left."""
    deadline = time.monotonic() + within
    while True:
        left = unsettled_entries(client)
        if left == 0 or time.monotonic() > deadline:
            return left
        time.sleep(0.25)
