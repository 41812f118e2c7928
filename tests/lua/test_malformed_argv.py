"""No script fails after its first write: every check, and everything that can raise a Lua error on malformed
ARGV (a number that is not one, JSON that does not decode or has the wrong shape, an argument left out), comes
before it. Redis does not roll a script back, and the runner answers a script's error as ``overloaded``, which
promises that nothing was done.

For every script in lua/, from a state where its well-formed call writes: each ARGV in turn is replaced by each
kind of garbage, and the arguments are cut short. A call that errors must leave every key of the node as it was
(DUMP and absolute expiry of each); a call that does not error (garbage that is a valid id, say) is fine too,
and its effect is put back before the next one. The well-formed call then runs and writes, so "unchanged" is not
for want of a state to change.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from gateway.codes.batches import batch_record
from gateway.keys import BLOCKLIST, KeySpace
from gateway.outcomes import DomainError, Outcome
from gateway.scripts.calls.checkout import (
    CheckoutKeys,
    ExpiryKeys,
    RefundKeys,
    RetainCouponsKeys,
    RetainOrdersKeys,
)
from gateway.scripts.calls.claim import ClaimKeys
from gateway.scripts.calls.restore import RestoreWalletKeys
from gateway.scripts.calls.retire import RetireActivityKeys, ReviveActivityKeys
from gateway.scripts.registry import load_scripts
from gateway.scripts.runner import ScriptRunner
from gateway.settings import Settings
from tests.lua.support import DAY, HASH_A, NOW, activity_config, put_activity

SCRIPTS = load_scripts()
KEYSPACE = KeySpace(8, 4)
ACT = KeySpace.activity("act1")
USER = "u1"
WALLET = KEYSPACE.wallet(USER)
BUCKET = KeySpace.code_of_bucket(1)
TTL = 90_000
ANSWER = json.dumps(
    {
        "claim_id": "c1",
        "coupons": [
            {"coupon_id": "c1.1", "template_id": "t1", "valid_from": NOW - DAY, "valid_until": NOW + DAY}
        ],
    },
    separators=(",", ":"),
)
SPLIT = '[{"sku":"a","amount":100}]'
PACK = json.dumps([{"template_id": "t1", "count": 1, "valid_days": 7}], separators=(",", ":"))
B1 = batch_record("act1", NOW - 60, NOW + 3600, PACK)
# Not a number, empty, bad JSON, not whole, not finite, negative, zero, and JSON of the wrong shape.
GARBAGE = ["x", "", "{", "1.5", "nan", "1e400", "-1", "0", "[{}]", '{"a":{}}', '["a",{}]', '{"config":[1]}']

Args = list[str | int]


@dataclass(frozen=True)
class Call:
    keys: list[str]
    args: Args


Scenario = Callable[[ScriptRunner], Awaitable[Call]]
SCENARIOS: dict[str, tuple[str, Scenario]] = {}  # id -> (script, the state and its well-formed call)


def scenario(script: str, variant: str = "") -> Callable[[Scenario], Scenario]:
    def register(build: Scenario) -> Scenario:
        SCENARIOS[f"{script}-{variant}" if variant else script] = (script, build)
        return build

    return register


# --- states, each with a call that writes --------------------------------------------------------------------


async def an_activity(runner: ScriptRunner, **overrides: object) -> None:
    assert (await put_activity(runner, "act1", activity_config(**overrides)))[0] == "ok"


async def a_coupon(runner: ScriptRunner) -> None:
    keys = [WALLET.coupons, WALLET.user_index(USER), WALLET.expiring, WALLET.seq, WALLET.events]
    assert await runner.run("deliver", keys, [NOW - DAY, "ev-d", USER, "act1", ANSWER]) == ["ok"]


async def a_lock(runner: ScriptRunner) -> None:
    await a_coupon(runner)
    reply = await runner.run(
        "lock", CheckoutKeys.of(WALLET), [NOW, "ev-l", USER, "o1", "c1.1", "100", SPLIT, 600]
    )
    assert reply[0] == "ok"


async def codes_stored(runner: ScriptRunner) -> None:
    keys = [BUCKET.codes, BUCKET.batches, BUCKET.seq, BUCKET.events]
    assert await runner.run("put_codes", keys, [NOW, "ev-p", "b1", B1, "put", "h1,h2"]) == ["ok", 2]


@scenario("blocklist")
async def blocklist_add(runner: ScriptRunner) -> Call:
    keys = [
        BLOCKLIST.users,
        BLOCKLIST.devices,
        BLOCKLIST.entries,
        BLOCKLIST.version,
        BLOCKLIST.seq,
        BLOCKLIST.events,
    ]
    return Call(keys, [NOW, "ev", "alice", "add", '["u1","u2"]', '["d1"]'])


@scenario("blocklist", "remove")
async def blocklist_remove(runner: ScriptRunner) -> Call:
    call = await blocklist_add(runner)
    assert (await runner.run("blocklist", call.keys, call.args))[0] == "ok"
    return Call(call.keys, [NOW, "ev", "alice", "remove", '["u1","u2"]', '["d1"]'])


@scenario("claim")
async def claim(runner: ScriptRunner) -> Call:
    await an_activity(runner)
    keys = ClaimKeys.of(ACT, ACT.idempotency(USER, "k"))
    return Call(
        keys, [NOW, "act1", USER, "d1", "", "0", "k", HASH_A, TTL, "c1", "e1", NOW, 0, "vip", "claim", ""]
    )


@scenario("claim", "grant")
async def claim_grant(runner: ScriptRunner) -> Call:
    await an_activity(runner, per_user_limit=2)
    keys = ClaimKeys.of(ACT, ACT.idempotency(f"alice\x1f{USER}", "k"))
    return Call(
        keys, [NOW, "act1", USER, "", "", "0", "k", HASH_A, TTL, "c1", "e1", "", "", "", "grant", "alice"]
    )


def batch_keys() -> list[str]:
    return [ACT.config, ACT.code_batches, ACT.seq, ACT.events]


@scenario("code_batch")
async def code_batch_reserve(runner: ScriptRunner) -> Call:
    await an_activity(runner)
    return Call(batch_keys(), [NOW, "ev", "alice", "act1", "b1", 2, "reserve"])


@scenario("code_batch", "void")
async def code_batch_void(runner: ScriptRunner) -> Call:
    call = await code_batch_reserve(runner)
    assert (await runner.run("code_batch", call.keys, call.args))[0] == "ok"
    return Call(batch_keys(), [NOW, "ev", "alice", "act1", "b1", 2, "void"])


@scenario("code_batch", "void-after-end")
async def code_batch_void_after_end(runner: ScriptRunner) -> Call:
    # ends_at is NOW: a reserve is refused from NOW on, a void is not.
    await an_activity(runner, now=NOW - 3600)
    reserve = [NOW - 1, "ev", "alice", "act1", "b1", 2, "reserve"]
    assert (await runner.run("code_batch", batch_keys(), reserve))[0] == "ok"
    return Call(batch_keys(), [NOW, "ev", "alice", "act1", "b1", 2, "void"])


FAILS = WALLET.failed_codes_of_user(USER)
CODE_IDEM = WALLET.idempotency(USER, "k")


@scenario("code_gate")
async def code_gate(runner: ScriptRunner) -> Call:
    return Call([FAILS, CODE_IDEM], [NOW, "at1", 10, 3600, "k", HASH_A])


@scenario("code_settle")
async def code_settle(runner: ScriptRunner) -> Call:
    gate = await code_gate(runner)
    assert await runner.run("code_gate", gate.keys, gate.args) == ["ok"]
    return Call([FAILS, CODE_IDEM, WALLET.seq, WALLET.events], [NOW, "ev", "at1", "k", HASH_A, TTL, ANSWER])


@scenario("deliver")
async def deliver(runner: ScriptRunner) -> Call:
    return Call(
        [WALLET.coupons, WALLET.user_index(USER), WALLET.expiring, WALLET.seq, WALLET.events],
        [NOW, "ev", USER, "act1", ANSWER],
    )


GRANT_KEYS = [ACT.grant_call("alice", "k"), ACT.grant_results("alice", "k"), ACT.seq, ACT.events]
RESULTS = '1 {"user_id":"u1","claim_id":"c1"}\n2 {"user_id":"u2","error":"sold_out"}'


@scenario("grant_call", "open")
async def grant_call_open(runner: ScriptRunner) -> Call:
    return Call(GRANT_KEYS, [NOW, "ev", "alice", "act1", HASH_A, TTL, "open", "", ""])


@scenario("grant_call", "settle")
async def grant_call_settle(runner: ScriptRunner) -> Call:
    opened = await grant_call_open(runner)
    assert await runner.run("grant_call", opened.keys, opened.args) == ["ok", ""]
    return Call(GRANT_KEYS, [NOW, "ev", "alice", "act1", HASH_A, TTL, "settle", 2, RESULTS])


@scenario("lock")
async def lock(runner: ScriptRunner) -> Call:
    await a_coupon(runner)
    return Call(CheckoutKeys.of(WALLET), [NOW, "ev", USER, "o1", "c1.1", "100", SPLIT, 600])


@scenario("order_view")
async def order_view(runner: ScriptRunner) -> Call:
    await a_lock(runner)
    return Call([WALLET.coupons, WALLET.orders], [USER, "o1"])


@scenario("patch_activity")
async def patch_activity(runner: ScriptRunner) -> Call:
    await an_activity(runner, now=NOW + 1000)  # starts after NOW: its window and limits may change
    changes = json.dumps({"name": "n2", "per_user_limit": 2, "ends_at": NOW + 9000})
    return Call([ACT.config, ACT.retired, ACT.seq, ACT.events], [NOW, "ev", "alice", "act1", changes])


@scenario("put_activity")
async def put_activity_call(runner: ScriptRunner) -> Call:
    act = KeySpace.activity("act2")
    config = json.dumps(activity_config())
    return Call(
        [act.config, act.allow_list, act.retired, act.seq, act.events],
        [NOW, "ev", "alice", "act2", config, '["u1"]'],
    )


def code_keys() -> list[str]:
    return [BUCKET.codes, BUCKET.batches, BUCKET.seq, BUCKET.events]


@scenario("put_codes")
async def put_codes(runner: ScriptRunner) -> Call:
    return Call(code_keys(), [NOW, "ev", "b1", B1, "put", "h1,h2"])


@scenario("put_codes", "drop")
async def put_codes_drop(runner: ScriptRunner) -> Call:
    await codes_stored(runner)
    return Call(code_keys(), [NOW, "ev", "b1", "", "drop", "h1,h2"])


@scenario("retire_codes")
async def retire_codes(runner: ScriptRunner) -> Call:
    await codes_stored(runner)  # B1's window ends at NOW + 3600
    return Call(code_keys(), [NOW + 4000, "ev", NOW + 3600, "b1", "1", "h1,h2"])


@scenario("redeem")
async def redeem(runner: ScriptRunner) -> Call:
    await a_lock(runner)
    return Call(CheckoutKeys.of(WALLET), [NOW + 1, "ev", USER, "o1"])


@scenario("redeem_code")
async def redeem_code(runner: ScriptRunner) -> Call:
    await codes_stored(runner)
    keys = [BUCKET.codes, BUCKET.batches, BUCKET.counters, BUCKET.seq, BUCKET.events]
    return Call(keys, [NOW, "ev", "h1", USER, "d1", "0", "c9"])


@scenario("refund")
async def refund(runner: ScriptRunner) -> Call:
    await a_lock(runner)
    assert (await runner.run("redeem", CheckoutKeys.of(WALLET), [NOW + 1, "ev-r", USER, "o1"]))[0] == "ok"
    return Call(RefundKeys.of(WALLET), [NOW + 2, "ev", USER, "o1"])


@scenario("release")
async def release(runner: ScriptRunner) -> Call:
    await a_lock(runner)
    return Call(CheckoutKeys.of(WALLET), [NOW + 1, "ev", USER, "o1"])


@scenario("restock")
async def restock(runner: ScriptRunner) -> Call:
    await an_activity(runner)
    return Call([ACT.config, ACT.retired, ACT.seq, ACT.events], [NOW, "ev", "alice", "act1", 5, 500, 100_000])


@scenario("retire_activity")
async def retire_activity(runner: ScriptRunner) -> Call:
    await an_activity(runner, starts_at=NOW - 7200, ends_at=NOW - 3600)
    return Call(RetireActivityKeys.of(ACT), [NOW, NOW - 60, 1])


@scenario("revive_activity")
async def revive_activity(runner: ScriptRunner) -> Call:
    retired = await retire_activity(runner)
    assert (await runner.run("retire_activity", retired.keys, retired.args))[0] == "ok"
    payload = json.dumps(
        {**ACTIVITY_PAYLOAD, "config": ["status", "active", "stock_left", "3", "taken", "1"]}
    )
    return Call(ReviveActivityKeys.of(ACT), ["finish", NOW, "ev", "alice", 1, payload, '{"at_least":1}'])


RESTORE_ACTIVITY_KEYS = [
    ACT.config,
    ACT.user_counts,
    ACT.device_counts,
    ACT.allow_list,
    ACT.code_batches,
    ACT.retired,
]
ACTIVITY_PAYLOAD = {
    "config": ["status", "active", "stock_left", "3"],
    "users": ["u1", "1"],
    "devices": ["d1", "1"],
    "allow": ["u1"],
    "batches": ["b1", "2"],
}


@scenario("restore_activity")
async def restore_activity(runner: ScriptRunner) -> Call:
    await an_activity(runner)
    return Call(RESTORE_ACTIVITY_KEYS, ["reset", json.dumps(ACTIVITY_PAYLOAD)])


@scenario("restore_activity", "more")
async def restore_activity_more(runner: ScriptRunner) -> Call:
    await an_activity(runner)
    payload = {name: value for name, value in ACTIVITY_PAYLOAD.items() if name != "config"}
    return Call(RESTORE_ACTIVITY_KEYS, ["more", json.dumps(payload)])


@scenario("restore_blocklist")
async def restore_blocklist(runner: ScriptRunner) -> Call:
    added = await blocklist_add(runner)
    assert (await runner.run("blocklist", added.keys, added.args))[0] == "ok"
    keys = [BLOCKLIST.users, BLOCKLIST.devices, BLOCKLIST.entries, BLOCKLIST.version]
    payload = {"users": ["u3"], "devices": ["d3"], "entries": ["user:u3", '{"added_at":1,"by":"a"}']}
    return Call(keys, ["reset", json.dumps(payload)])


@scenario("restore_codes")
async def restore_codes(runner: ScriptRunner) -> Call:
    await codes_stored(runner)
    payload = {"codes": ["h3", '{"batch":"b1"}'], "batches": ["b1", B1], "counters": ["act1", "1"]}
    return Call([BUCKET.codes, BUCKET.batches, BUCKET.counters], ["reset", json.dumps(payload)])


@scenario("restore_finish")
async def restore_finish(runner: ScriptRunner) -> Call:
    return Call([WALLET.seq, WALLET.events], [NOW, "ev", "ops", 5, '{"coupons":1}'])


@scenario("restore_record")
async def restore_record(runner: ScriptRunner) -> Call:
    return Call([ACT.idempotency(USER, "k")], [f"{HASH_A}|{ANSWER}", int(time.time()) + TTL])


def restore_wallet_keys() -> list[str]:
    return list(RestoreWalletKeys.of(WALLET, USER))


@scenario("restore_wallet", "user")
async def restore_wallet_user(runner: ScriptRunner) -> Call:
    await a_coupon(runner)
    record = json.dumps({"user": USER, "activity": "act1", "status": "available", "version": 1})
    return Call(restore_wallet_keys(), ["user", json.dumps(["c2.1", record, "c3.1", record])])


@scenario("restore_wallet", "checkout")
async def restore_wallet_checkout(runner: ScriptRunner) -> Call:
    await a_lock(runner)
    payload = {
        "orders": ["u1/o2", '{"coupon":"c1.1"}'],
        "locks": ["c1.1", NOW + 60],
        "counters": ["act1|locked", "1"],
        "expiring": ["c1.1", NOW + DAY],
        "finished": ["c9.1", NOW - DAY],
    }
    return Call(restore_wallet_keys(), ["checkout", json.dumps(payload)])


@scenario("set_status")
async def set_status(runner: ScriptRunner) -> Call:
    await an_activity(runner)
    return Call([ACT.config, ACT.retired, ACT.seq, ACT.events], [NOW, "ev", "alice", "act1", "pause"])


@scenario("sweep_locks")
async def sweep_locks(runner: ScriptRunner) -> Call:
    await a_lock(runner)
    return Call(CheckoutKeys.of(WALLET), [NOW + 700, "ev", 100])


@scenario("retain_orders")
async def retain_orders(runner: ScriptRunner) -> Call:
    await a_lock(runner)
    await runner.run("release", CheckoutKeys.of(WALLET), [NOW + 1, "ev-r", USER, "o1"])
    return Call(RetainOrdersKeys.of(WALLET), [NOW + 100, "ev", NOW + 50, 100])


@scenario("retain_coupons")
async def retain_coupons(runner: ScriptRunner) -> Call:
    await a_coupon(runner)
    await runner.client.zadd(WALLET.finished, {"c1.1": NOW})
    return Call(RetainCouponsKeys.of(WALLET, USER), [NOW + 100, "ev", NOW + 50, USER, '["c1.1"]'])


@scenario("sweep_expired")
async def sweep_expired(runner: ScriptRunner) -> Call:
    await a_coupon(runner)  # valid until NOW + DAY: due then, and expired
    return Call(list(ExpiryKeys.of(WALLET)), [NOW + DAY, 100])


@scenario("wallet_page")
async def wallet_page(runner: ScriptRunner) -> Call:
    await a_coupon(runner)
    return Call([WALLET.coupons, WALLET.user_index(USER)], [NOW, "", 10, "", ""])


# --- the node's whole keyspace -------------------------------------------------------------------------------

Dump = dict[bytes, tuple[bytes, int]]


@pytest.fixture
async def node(settings: Settings, clean: None) -> AsyncIterator[Redis]:
    """A plain binary client on the session's one-node cluster: KEYS, DUMP and RESTORE over every slot."""
    client: Redis = Redis.from_url(settings.redis.url)
    yield client
    await client.aclose()


async def dump(node: Redis) -> Dump:
    """Every key: its serialized value and absolute expiry in ms (-1: none)."""
    keys = sorted(await node.keys("*"))
    pipe = node.pipeline(transaction=False)
    for key in keys:
        pipe.dump(key)
        pipe.pexpiretime(key)
    replies = await pipe.execute()
    return {key: (replies[2 * i], replies[2 * i + 1]) for i, key in enumerate(keys)}


async def put_back(node: Redis, state: Dump) -> None:
    await node.flushall()
    for key, (value, expires_at) in state.items():
        await node.restore(key, max(expires_at, 0), value, absttl=expires_at > 0)


def variants(args: Args) -> list[tuple[str, Args]]:
    """(what was broken, the arguments): each ARGV replaced by each garbage, then every shorter prefix."""
    broken = [
        (f"ARGV[{i + 1}]={bad!r}", [*args[:i], bad, *args[i + 1 :]])
        for i in range(len(args))
        for bad in GARBAGE
        if bad != str(args[i])
    ]
    return broken + [(f"only {n} ARGV", args[:n]) for n in range(len(args))]


def test_every_script_has_a_scenario() -> None:
    assert {script for script, _ in SCENARIOS.values()} == set(SCRIPTS)


@pytest.mark.parametrize("case", sorted(SCENARIOS))
async def test_malformed_argv_fails_before_any_write(case: str, runner: ScriptRunner, node: Redis) -> None:
    script, build = SCENARIOS[case]
    call = await build(runner)
    assert len(call.args) == len(SCRIPTS[script].args), "the scenario gives every ARGV"
    errored: list[str] = []
    for what, args in variants(call.args):
        before = await dump(node)
        try:
            await runner.run(script, call.keys, args)
        except DomainError as refused:
            assert refused.outcome is Outcome.OVERLOADED
            assert isinstance(refused.__cause__, ResponseError), refused.__cause__
            assert await dump(node) == before, (
                f"{script} with {what} failed after a write: {refused.__cause__}"
            )
            errored.append(what)
        else:
            await put_back(node, before)  # garbage the script takes (an id, say): fine, and undone

    assert errored, f"no malformed ARGV made {script} fail"  # the checks are there to be seen
    before = await dump(node)
    reply = await runner.run(script, call.keys, call.args)
    assert reply[0] in ("ok", "pending"), reply
    if not SCRIPTS[script].read_only:
        assert await dump(node) != before, f"the well-formed {script} call writes"
