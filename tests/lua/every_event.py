"""One run of every script that appends an event, each call with every KEYS and ARGV spelled out, and what each
call appended to its stream: the event schema's tests (tests/lua/test_event_schema.py) decode these, the sink's
(tests/worker/test_event_versions.py) applies them.

Each event type is appended at least once, and each optional field both set and empty where a script can write
either (a keyed and an unkeyed claim, a grant; a lock's deadline and a redeem's none; an order an expiry finds and
one it does not; a refund that returns the coupon and one that keeps it)."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.codes.batches import batch_record
from gateway.keys import BLOCKLIST, KeySpace, Partition
from gateway.scripts.calls import retire as retire_calls
from gateway.scripts.calls.checkout import (
    CheckoutKeys,
    ExpiryKeys,
    RefundKeys,
    RetainCouponsKeys,
    RetainOrdersKeys,
)
from gateway.scripts.runner import ScriptRunner
from tests.lua.support import DAY, HASH_A, NOW, Claimer, activity_config, deliver, put_activity

T = TypeVar("T")
KEYSPACE = KeySpace(8, 4)
ACTIVITY = "act-ev"
ACT = KEYSPACE.activity(ACTIVITY)
TTL = 86_400
LOCK_SECONDS = 60
CODE_HASH = "0a" * 32
CODES = KEYSPACE.code(CODE_HASH)
PACK = [{"template_id": "t1", "count": 2, "valid_days": 7}]
SPLIT = json.dumps([{"sku": "s1", "amount": 100}], separators=(",", ":"))


@dataclass(frozen=True)
class Appended:
    script: str
    stream: str
    entry_id: str
    fields: dict[str, str]


@dataclass
class Recorder:
    """Runs scripts through the runner and keeps what each appended to the stream it was given."""

    runner: ScriptRunner
    appended: list[Appended] = field(default_factory=list)

    async def run(self, script: str, keys: list[str], argv: list[Any]) -> list[Any]:
        reply = await self.watching(script, keys[-1], self.runner.run(script, keys, argv))
        assert reply[0] == "ok", (script, reply)
        return reply

    async def watching(self, script: str, stream: str, call: Awaitable[T]) -> T:
        """Await ``call`` (a script writing to ``stream``), then keep the entries it appended."""
        last = await self.runner.client.xrevrange(stream, count=1)
        reply = await call
        start = f"({last[0][0]}" if last else "-"
        for entry_id, fields in await self.runner.client.xrange(stream, min=start):
            self.appended.append(Appended(script, stream, entry_id, fields))
        return reply


async def activity_scripts(rec: Recorder) -> dict[str, str]:
    """The activity's life: created, patched, restocked, paused and resumed, three claims (keyed, unkeyed, a
    grant) and a keyed grant call. Its answers by user."""
    config = activity_config(stock=10, pack=PACK, name="before")
    created = await rec.watching(
        "put_activity", ACT.events, put_activity(rec.runner, ACTIVITY, config, allow=["u1"])
    )
    assert created[0] == "ok", created
    operator = [NOW, "ev-patch", "alice", ACTIVITY]
    await rec.run(
        "patch_activity",
        [ACT.config, ACT.retired, ACT.seq, ACT.events],
        [*operator, json.dumps({"name": "after"})],
    )
    operator[1] = "ev-restock"
    await rec.run("restock", [ACT.config, ACT.retired, ACT.seq, ACT.events], [*operator, 5, 500, ""])
    for action in ("pause", "resume"):
        operator[1] = f"ev-{action}"
        await rec.run("set_status", [ACT.config, ACT.retired, ACT.seq, ACT.events], [*operator, action])
    claim = Claimer(rec.runner, TTL)
    answers = {}
    for user, extra in (("u1", {"key": "k1"}), ("u2", {}), ("u3", {"mode": "grant", "operator": "alice"})):
        claimed = await rec.watching(
            "claim", ACT.events, claim(ACTIVITY, user=user, device=f"d-{user}", **extra)
        )
        assert claimed.outcome == "ok", claimed.reply
        answers[user] = claimed.answer
    grant = [ACT.grant_call("alice", "gk"), ACT.grant_results("alice", "gk"), ACT.seq, ACT.events]
    call = [NOW, "ev-grant-open", "alice", ACTIVITY, HASH_A, TTL]
    assert (await rec.runner.run("grant_call", grant, [*call, "open", "", ""]))[0] == "ok"  # appends nothing
    call[1] = "ev-grant"
    result = json.dumps({"user_id": "u3", "claim_id": json.loads(answers["u3"])["claim_id"]})
    await rec.run("grant_call", grant, [*call, "settle", "1", f"1 {result}"])
    return answers


async def checkout_scripts(rec: Recorder, answer: str) -> None:
    """u1's two coupons delivered. The first locked, redeemed and refunded (returned); locked again and released;
    locked once more, lapsed, its order locking the second instead: swept with no order to change, then the
    second swept with its order. The second then locked, redeemed and refunded past its validity (kept). Then
    the expiry sweep: the first (available) expired, the second (redeemed) final without an event."""
    wallet = KEYSPACE.wallet("u1")
    delivered = await rec.watching(
        "deliver", wallet.events, deliver(rec.runner, wallet, "u1", ACTIVITY, answer)
    )
    assert delivered == ["ok"], delivered
    first, second = (coupon["coupon_id"] for coupon in json.loads(answer)["coupons"])
    refund_keys = list(RefundKeys.of(wallet))
    late = NOW + 8 * DAY
    steps: list[tuple[int, str, list[Any]]] = [
        (NOW, "lock", ["o1", first, "100", SPLIT, LOCK_SECONDS]),
        (NOW + 1, "redeem", ["o1"]),
        (NOW + 2, "refund", ["o1"]),
        (NOW + 3, "lock", ["o2", first, "100", SPLIT, LOCK_SECONDS]),
        (NOW + 4, "release", ["o2"]),
        (NOW + 5, "lock", ["o3", first, "100", SPLIT, LOCK_SECONDS]),
        (NOW + 70, "lock", ["o3", second, "100", SPLIT, LOCK_SECONDS]),
        (NOW + 100, "sweep_locks", [10]),
        (NOW + 200, "sweep_locks", [10]),
        (NOW + 300, "lock", ["o4", second, "50", SPLIT, LOCK_SECONDS]),
        (NOW + 301, "redeem", ["o4"]),
        (late, "refund", ["o4"]),
    ]
    for n, (now, script, rest) in enumerate(steps):
        keys = refund_keys if script == "refund" else list(CheckoutKeys.of(wallet))
        user = [] if script == "sweep_locks" else ["u1"]
        await rec.run(script, keys, [now, f"ev-{script}-{n}", *user, *rest])
    swept = await rec.run("sweep_expired", list(ExpiryKeys.of(wallet)), [late + 1, 10])
    assert swept == ["ok", 1, 2], swept
    # The retention passed: every order leaves, then both coupons (final: one expired, one past its refunds).
    far, retention = late + 40 * DAY, 30 * DAY
    await rec.run(
        "retain_orders", list(RetainOrdersKeys.of(wallet)), [far, "ev-retain-o", far - retention, 100]
    )
    coupon_keys = list(RetainCouponsKeys.of(wallet, "u1"))
    both = json.dumps([first, second])
    retained = await rec.run("retain_coupons", coupon_keys, [far, "ev-retain-c", far - retention, "u1", both])
    assert retained == ["ok", 2], retained


async def code_scripts(rec: Recorder) -> None:
    """A batch reserved and its code stored, redeemed and its answer kept; another batch voided; the first's
    unredeemed codes dropped; then, its window over the retention ago, the first retired (its code and record)."""
    batch_keys = [ACT.config, ACT.code_batches, ACT.seq, ACT.events]
    await rec.run("code_batch", batch_keys, [NOW, "ev-reserve", "alice", ACTIVITY, "b1", 2, "reserve"])
    await rec.run("code_batch", batch_keys, [NOW, "ev-void", "alice", ACTIVITY, "b2", 3, "void"])
    record = batch_record(ACTIVITY, NOW - 60, NOW + 3600, json.dumps(PACK))
    code_keys = [CODES.codes, CODES.batches, CODES.seq, CODES.events]
    await rec.run("put_codes", code_keys, [NOW, "ev-put", "b1", record, "put", CODE_HASH])
    redeem_keys = [CODES.codes, CODES.batches, CODES.counters, CODES.seq, CODES.events]
    reply = await rec.run(
        "redeem_code", redeem_keys, [NOW, "ev-redeem", CODE_HASH, "u4", "d4", "0", "claim-code"]
    )
    wallet = KEYSPACE.wallet("u4")
    settle_keys = [
        wallet.failed_codes_of_user("u4"),
        wallet.idempotency("u4", "rk"),
        wallet.seq,
        wallet.events,
    ]
    await rec.run("code_settle", settle_keys, [NOW, "ev-settle", "attempt-1", "rk", HASH_A, TTL, reply[1]])
    await rec.run("put_codes", code_keys, [NOW, "ev-drop", "b1", "", "drop", CODE_HASH])
    far = NOW + 3600 + 30 * DAY
    retired = await rec.run("retire_codes", code_keys, [far, "ev-retire", NOW + 3600, "b1", "1", CODE_HASH])
    assert retired == ["ok", 1], retired


async def partition_scripts(rec: Recorder) -> None:
    """The blocklist changed (users only: the devices' list is empty), a partition restored, and a retired
    activity's partition brought back."""
    keys = [BLOCKLIST.users, BLOCKLIST.devices, BLOCKLIST.entries, BLOCKLIST.version, BLOCKLIST.seq]
    await rec.run("blocklist", [*keys, BLOCKLIST.events], [NOW, "ev-block", "alice", "add", '["u9"]', "[]"])
    restored = Partition(KEYSPACE.wallet("u9").tag)
    summary = json.dumps({"at_least": 0, "coupons": 0})
    await rec.run(
        "restore_finish", [restored.seq, restored.events], [NOW, "ev-restored", "restore", 0, summary]
    )
    # An ended activity retired (no event: its stream leaves with it), then brought back by a late change.
    old = KEYSPACE.activity("act-old")
    config = activity_config(starts_at=NOW - 7200, ends_at=NOW - 3600)
    assert (await put_activity(rec.runner, "act-old", config))[0] == "ok"
    retire = retire_calls.RetireActivityKeys.of(old)
    assert (await rec.runner.run("retire_activity", retire, [NOW, NOW, 1]))[0] == "ok"
    payload = json.dumps({"config": ["status", "active", "stock_left", "10", "taken", "0"], "users": []})
    revived = json.dumps({"at_least": 1, "users": 0})
    await rec.run(
        "revive_activity",
        list(retire_calls.ReviveActivityKeys.of(old)),
        ["finish", NOW, "ev-revived", "alice", 1, payload, revived],
    )


async def every_event(runner: ScriptRunner) -> list[Appended]:
    """Run every event-appending script (see the module's docstring); what each appended, in order."""
    rec = Recorder(runner)
    answers = await activity_scripts(rec)
    await checkout_scripts(rec, answers["u1"])
    await code_scripts(rec)
    await partition_scripts(rec)
    return rec.appended
