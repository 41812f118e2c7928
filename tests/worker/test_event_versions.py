"""A worker reads the events of the schema's previous version as well as the current one (gateway/events.py): a
gateway and a worker one version apart run side by side during a deploy.

Version 1 is what the scripts wrote before the version field: exactly today's fields without ``v`` (adding ``v``
is the scripts' only change). Every script that appends an event runs (tests/lua/every_event.py); its entries,
``v`` taken out, are applied by the sink, and the ledger must be what the same entries as written make it."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from gateway.events import PREVIOUS_VERSION, SCHEMA_VERSION
from gateway.scripts.runner import ScriptRunner
from tests.lua.every_event import every_event
from worker import sink
from worker.events import Entry

# Every table the sink writes, each row as JSON in a stable order (conflicts' serial and time left out).
TABLES = {
    "claims": "SELECT to_jsonb(t) FROM claims t ORDER BY claim_id",
    "coupons": "SELECT to_jsonb(t) FROM coupons t ORDER BY coupon_id",
    "coupon_events": "SELECT to_jsonb(t) FROM coupon_events t ORDER BY coupon_id, version",
    "orders": "SELECT to_jsonb(t) FROM orders t ORDER BY user_id, order_id",
    "idempotency_records": "SELECT to_jsonb(t) FROM idempotency_records t ORDER BY redis_key",
    "audit": "SELECT to_jsonb(t) FROM audit t ORDER BY event_id",
    "blocklist": "SELECT to_jsonb(t) FROM blocklist t ORDER BY kind, id",
    "partition_marks": "SELECT to_jsonb(t) FROM partition_marks t ORDER BY partition",
    "held_entries": "SELECT to_jsonb(t) FROM held_entries t ORDER BY stream, entry_id",
    "conflicts": "SELECT to_jsonb(t) - 'conflict_id' - 'noted_at' FROM conflicts t ORDER BY entry_id",
}


async def ledger(conn: asyncpg.Connection) -> dict[str, list[Any]]:
    return {table: [row[0] for row in await conn.fetch(query)] for table, query in TABLES.items()}


async def test_entries_of_the_previous_version_are_applied_as_the_current_ones(
    runner: ScriptRunner, db: asyncpg.Pool
) -> None:
    appended = await every_event(runner)
    current = [Entry(a.stream, a.entry_id, a.fields) for a in appended]
    previous = [Entry(e.stream, e.entry_id, {k: v for k, v in e.fields.items() if k != "v"}) for e in current]
    assert {e.fields["v"] for e in current} == {str(SCHEMA_VERSION)}
    assert {e.event.v for e in previous} == {PREVIOUS_VERSION}

    async with db.acquire() as conn:
        assert await sink.apply(conn, previous) == set()
        applied = await ledger(conn)
        await conn.execute(f"TRUNCATE {', '.join(TABLES)}")
        assert await sink.apply(conn, current) == set()
        assert await ledger(conn) == applied

    counts = {table: len(rows) for table, rows in applied.items()}
    coupons = [json.loads(row) for row in applied["coupons"]]
    assert sorted((row["status"], row["version"]) for row in coupons) == [
        ("expired", 9),  # the first: delivered, 7 checkout changes, then its expiry
        ("redeemed", 5),  # the second: delivered, 4 checkout changes; its refund past validity kept it
    ]
    assert counts == {
        "claims": 4,  # u1 (keyed), u2, u3 (a grant), u4 (a code)
        "coupons": 2,  # u1's, delivered
        # 2 delivered, 11 checkout changes (a refund that keeps its coupon: none), the first's expiry
        "coupon_events": 14,
        "orders": 4,
        "idempotency_records": 3,  # u1's claim, the grant call, u4's code
        # created, patched, restocked, paused, resumed, reserved, voided, blocklist, restored, revived
        "audit": 10,
        "blocklist": 1,
        # the activity, u1's and u4's wallets, the code bucket, the blocklist, u9's wallet, the revived activity
        "partition_marks": 7,
        "held_entries": 0,
        "conflicts": 0,
    }
