"""A workload that writes every key the project writes, and a runner that notes every key of Redis after each
script: what tests/lua/test_key_retention.py holds against the retention table (gateway.key_retention.RETENTION).

The workload is every_event (every script that appends an event), then the writers that append none or are not
scripts: the attempt gates (a user's and a device's), a keyed grant call left open (its results kept), every
restore script, the fence's record of checked primaries, and a dead letter."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from gateway.keys import BLOCKLIST, ActivityKeys, KeySpace, order_field
from gateway.scripts import ledger_check
from gateway.scripts.calls import Arg
from gateway.scripts.calls import claim as claim_calls
from gateway.scripts.calls import codes as code_calls
from gateway.scripts.calls import restore as restore_calls
from gateway.scripts.fence import Fence
from gateway.scripts.registry import load_scripts
from gateway.scripts.runner import RedisClient, ScriptRunner
from tests.lua.every_event import ACT, ACTIVITY, CODES, KEYSPACE, PACK, every_event
from tests.lua.support import HASH_A, HASH_B, NOW
from worker.dead_letters import bury
from worker.events import Entry

# What one observation of a key says: its Redis type, and whether Redis expires it by itself.
Seen = dict[str, set[tuple[str, bool]]]


class Watching(ScriptRunner):
    """A script runner that notes, after each script it runs, every key of Redis (every primary), its type and
    whether it has an expiry: keys a later script deletes are seen too."""

    def __init__(self, client: RedisClient) -> None:
        super().__init__(client, load_scripts(), Fence(open_=True))
        self.seen: Seen = {}
        self.scripts_run: set[str] = set()

    async def run(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> list[Any]:
        try:
            return await super().run(name, keys, args)
        finally:
            self.scripts_run.add(name)
            await self.note()

    async def note(self) -> None:
        # A cluster client's SCAN walks every primary.
        keys = [key async for key in self.client.scan_iter(count=1000)]
        for key in keys:
            kind, expiry = await self.client.type(key), await self.client.pttl(key)
            if kind != "none":  # deleted in between
                self.seen.setdefault(str(key), set()).add((str(kind), expiry >= 0))


async def gates_and_an_open_grant_call(runner: Watching) -> None:
    """A user's and a device's attempt gates (code_gate appends nothing); a keyed grant call of two users settled
    for one: it stays open, its results kept."""
    user, device = KEYSPACE.wallet("u5"), KEYSPACE.wallet("d5")
    gates = [
        (code_calls.CodeGateKeys(user.failed_codes_of_user("u5"), user.idempotency("u5", "rk5")), "rk5"),
        (code_calls.CodeGateKeys(device.failed_codes_of_device("d5"), device.no_idempotency), ""),
    ]
    for keys, idem_key in gates:
        reply = await code_calls.code_gate(
            runner,
            keys,
            now=NOW,
            attempt_id="attempt-5",
            limit=10,
            window=3600,
            idem_key=idem_key,
            body_hash=HASH_A,
        )
        assert reply == ["ok"], reply
    call_keys = claim_calls.GrantCallKeys.of(ACT, "alice", "open-call")
    common: dict[str, Any] = dict(
        now=NOW, operator="alice", activity_id=ACTIVITY, body_hash=HASH_B, ttl=86_400
    )
    opened = await claim_calls.grant_call(
        runner, call_keys, event_id="ev-open-2", step="open", users=None, results="", **common
    )
    assert opened[0] == "ok", opened
    result = json.dumps({"user_id": "u6", "error": "not_eligible"})
    settled = await claim_calls.grant_call(
        runner, call_keys, event_id="ev-settle-2", step="settle", users=2, results=f"1 {result}", **common
    )
    assert settled[0] == "pending", settled


async def restores(runner: Watching) -> None:
    """Every restore script once, each on a partition of its kind, then restore_finish on the activity."""
    act: ActivityKeys = KeySpace.activity("act-restored")
    activity = {
        "config": ["status", "active", "stock_left", "5", "pack", json.dumps(PACK)],
        "users": ["u7", "1"],
        "devices": ["d7", "1"],
        "allow": ["u7"],
        "batches": ["b7", "2"],
    }
    assert await restore_calls.restore_activity(
        runner, restore_calls.RestoreActivityKeys.of(act), step="reset", payload=json.dumps(activity)
    ) == ["ok"]
    wallet = KEYSPACE.wallet("u7")
    coupon = {"user": "u7", "activity": "act-restored", "status": "locked", "version": 2}
    user = ["c7.1", json.dumps(coupon)]
    assert await restore_calls.restore_wallet(
        runner, restore_calls.RestoreWalletKeys.of(wallet, "u7"), step="user", payload=json.dumps(user)
    ) == ["ok"]
    checkout = {
        "orders": [order_field("u7", "o7"), json.dumps({"coupon": "c7.1", "status": "locked"})],
        "locks": ["c7.1", str(NOW + 900)],
        "counters": ["act-restored|locked", "1"],
    }
    assert await restore_calls.restore_wallet(
        runner, restore_calls.RestoreWalletKeys.of(wallet), step="checkout", payload=json.dumps(checkout)
    ) == ["ok"]
    codes = KEYSPACE.code("7b" * 32)
    batch = json.dumps({"activity": "act-restored", "starts_at": NOW, "ends_at": NOW + 3600, "pack": PACK})
    payload = {
        "codes": ["7b" * 32, '{"batch":"b7"}'],
        "batches": ["b7", batch],
        "counters": ["act-restored", "0"],
    }
    assert await restore_calls.restore_codes(
        runner, restore_calls.RestoreCodesKeys.of(codes), step="reset", payload=json.dumps(payload)
    ) == ["ok"]
    blocked = {
        "users": ["u8"],
        "devices": ["d8"],
        "entries": ["device:d8", json.dumps({"added_at": NOW, "by": "alice"})],
    }
    assert await restore_calls.restore_blocklist(
        runner, restore_calls.RestoreBlocklistKeys.of(BLOCKLIST), step="more", payload=json.dumps(blocked)
    ) == ["ok"]
    expires = int(time.time()) + 3600  # EXAT against Redis's own clock
    for record in (act.idempotency("u7", "rk7"), wallet.idempotency("u7", "rk7")):
        assert await restore_calls.restore_record(
            runner, restore_calls.RestoreRecordKeys(record), value=f"{HASH_A}|{{}}", expires=expires
        ) == ["ok"]
    summary = json.dumps({"at_least": 0})
    finished = await restore_calls.restore_finish(
        runner,
        restore_calls.RestoreFinishKeys.of(act),
        now=NOW,
        event_id="ev-restored-2",
        operator="restore",
        at_least=0,
        summary=summary,
    )
    assert finished[0] == "ok", finished


async def outside_scripts(runner: Watching, pool: asyncpg.Pool) -> None:
    """What the processes write without a script: the fence's record (a check that passes) and dead letters
    (the worker's: one in each kind of partition, copied from a real entry)."""
    await ledger_check.check(runner.client, pool, Fence())
    for partition in (ACT, KEYSPACE.wallet("u1"), CODES, BLOCKLIST):  # a dead letter in each kind
        [(entry_id, fields)] = await runner.client.xrange(partition.events, count=1) or []
        entry = Entry(partition.events, str(entry_id), {str(k): str(v) for k, v in (fields or {}).items()})
        await bury(runner.client, entry, "the retention test's", 3)
    await runner.note()


async def every_key(runner: Watching, pool: asyncpg.Pool) -> None:
    """Write every key the project writes (see the module's docstring); ``runner.seen`` holds what it saw."""
    await every_event(runner)
    await gates_and_an_open_grant_call(runner)
    await restores(runner)
    await outside_scripts(runner, pool)
