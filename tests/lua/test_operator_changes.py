"""The operators' change scripts (set_status, restock, patch_activity) against real Redis: every reply, every
key each one touches before and after, the event each success appends, and the claim honouring the change."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.events import SCHEMA_VERSION
from gateway.keys import ActivityKeys, KeySpace
from gateway.scripts.runner import RedisClient, ScriptRunner
from tests.lua.conftest import MakeActivity
from tests.lua.support import NOW, Claimer, Snapshot, changed, last_event, snapshot

ACT = KeySpace.activity("act1")


async def change(
    runner: ScriptRunner,
    script: str,
    argument: str | int,
    *,
    activity_id: str = "act1",
    now: int = NOW,
    operator: str = "alice",
    event_id: str = "ev-1",
) -> list[Any]:
    """One of the change scripts with every KEY and ARGV spelled out (what AdminService._change builds).
    restock also takes a pack's face value and the budget from the activity's definition: here, the values
    the test mirrored into the config stand for that definition."""
    keys = KeySpace.activity(activity_id)
    arguments: list[str | int] = [now, event_id, operator, activity_id, argument]
    if script == "restock":
        face, budget = await runner.control.hmget(keys.config, ["face_per_pack", "budget"])
        arguments += [face or 0, budget or ""]
    return await runner.run(script, [keys.config, keys.retired, keys.seq, keys.events], arguments)


def patch(**changes: Any) -> str:
    return json.dumps(changes)


async def make(make_activity: MakeActivity, **overrides: Any) -> ActivityKeys:
    """An activity mirrored with the name and budget hot_config now carries (budget "" = none)."""
    return await make_activity("act1", **{"name": "sale", "budget": "", **overrides})


def hot(shot: Snapshot, keys: ActivityKeys = ACT) -> dict[str, str]:
    value: dict[str, str] = shot[keys.config][1]
    return value


def new_entries(before: Snapshot, after: Snapshot, keys: ActivityKeys = ACT) -> list[dict[str, str]]:
    old = before[keys.events][1]["entries"] if keys.events in before else []
    entries = after[keys.events][1]["entries"]
    assert entries[: len(old)] == old, "earlier events changed"
    return [fields for _, fields in entries[len(old) :]]


def assert_one_change(
    before: Snapshot, after: Snapshot, config_changes: dict[str, str], keys: ActivityKeys = ACT
) -> dict[str, str]:
    """Exactly the config (by exactly these fields), seq (+1) and one new event; returns the event."""
    assert changed(before, after) == {keys.config, keys.seq, keys.events}
    assert hot(after, keys) == {**hot(before, keys), **config_changes}
    assert int(after[keys.seq][1]) == int(before[keys.seq][1]) + 1
    for key in (keys.config, keys.seq, keys.events):
        assert after[key][0] == before[key][0] and after[key][2] == -1  # same type, nothing expires
    events = new_entries(before, after, keys)
    assert len(events) == 1, events
    assert events[0]["seq"] == after[keys.seq][1]
    return events[0]


def assert_event(
    event: dict[str, str],
    kind: str,
    *,
    before: dict[str, Any],
    after: dict[str, Any],
    seq: str,
    at: int = NOW,
    by: str = "alice",
    event_id: str = "ev-1",
    **extra: str,
) -> None:
    expected_keys = {"type", "v", "id", "seq", "at", "activity", "by", "before", "after", *extra}
    assert set(event) == expected_keys, event
    assert event["type"] == kind
    assert event["v"] == str(SCHEMA_VERSION)
    assert event["id"] == event_id
    assert event["seq"] == seq
    assert event["at"] == str(at)
    assert event["activity"] == "act1"
    assert event["by"] == by
    assert json.loads(event["before"]) == before
    assert json.loads(event["after"]) == after
    for name, value in extra.items():
        assert event[name] == value, (name, event)


async def refused(
    runner: ScriptRunner, client: RedisClient, script: str, argument: str | int, outcome: str, **call: Any
) -> None:
    """A refusal: exactly ``[outcome]`` and not one key created, changed or deleted."""
    before = await snapshot(client)
    reply = await change(runner, script, argument, **call)
    assert reply == [outcome], (script, argument, reply)
    assert await snapshot(client) == before, f"{script} {outcome} wrote something"


# --- set_status --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("initial", "action", "after"),
    [
        ("active", "pause", "paused"),
        ("paused", "resume", "active"),
        ("active", "end", "ended"),
        ("paused", "end", "ended"),
    ],
)
async def test_set_status_transitions(
    runner: ScriptRunner,
    redis_client: RedisClient,
    make_activity: MakeActivity,
    initial: str,
    action: str,
    after: str,
) -> None:
    await make(make_activity, status=initial)
    before = await snapshot(redis_client)

    reply = await change(runner, "set_status", action, operator="bob", event_id="ev-s", now=NOW + 7)

    assert reply == ["ok", after]
    event = assert_one_change(before, await snapshot(redis_client), {"status": after})
    assert_event(
        event,
        "status_changed",
        before={"status": initial},
        after={"status": after},
        seq="2",
        at=NOW + 7,
        by="bob",
        event_id="ev-s",
    )


@pytest.mark.parametrize(("initial", "action"), [("paused", "pause"), ("active", "resume")])
async def test_set_status_to_the_same_status_is_a_replay(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity, initial: str, action: str
) -> None:
    await make(make_activity, status=initial)
    before = await snapshot(redis_client)
    assert await change(runner, "set_status", action) == ["replay", initial]
    assert await snapshot(redis_client) == before


@pytest.mark.parametrize("action", ["pause", "resume", "end"])
async def test_set_status_on_ended_is_state_conflict(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity, action: str
) -> None:
    await make(make_activity, status="ended")
    await refused(runner, redis_client, "set_status", action, "state_conflict")


@pytest.mark.parametrize("script", ["set_status", "restock", "patch_activity"])
async def test_unknown_activity_is_not_found(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity, script: str
) -> None:
    await make(make_activity)  # another activity exists; the unknown one gets no key at all
    arguments: dict[str, str | int] = {"set_status": "pause", "restock": 5, "patch_activity": patch(name="x")}
    argument = arguments[script]
    await refused(runner, redis_client, script, argument, "not_found", activity_id="nope")
    nope = KeySpace.activity("nope")
    assert await redis_client.exists(nope.config, nope.seq, nope.events) == 0


async def test_set_status_sequence_numbers_follow_each_other(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity
) -> None:
    await make(make_activity)
    assert await change(runner, "set_status", "pause", event_id="e2") == ["ok", "paused"]
    assert await change(runner, "set_status", "pause", event_id="e-replay") == ["replay", "paused"]
    assert await change(runner, "set_status", "resume", event_id="e3") == ["ok", "active"]
    assert await change(runner, "set_status", "end", event_id="e4") == ["ok", "ended"]
    assert await change(runner, "set_status", "resume", event_id="e-refused") == ["state_conflict"]
    entries: Any = await redis_client.xrange(ACT.events)
    assert [(f["type"], f["id"], f["seq"]) for _, f in entries] == [
        ("activity_created", entries[0][1]["id"], "1"),
        ("status_changed", "e2", "2"),
        ("status_changed", "e3", "3"),
        ("status_changed", "e4", "4"),
    ]
    assert await redis_client.get(ACT.seq) == "4"


async def test_claim_honours_pause_and_resume(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity, claimer: Claimer
) -> None:
    await make(make_activity)
    assert (await change(runner, "set_status", "pause"))[0] == "ok"
    before = await snapshot(redis_client)
    assert (await claimer(user="u1")).reply == ["paused"]
    assert await snapshot(redis_client) == before
    assert (await change(runner, "set_status", "resume"))[0] == "ok"
    assert (await claimer(user="u1")).outcome == "ok"
    assert (await change(runner, "set_status", "end"))[0] == "ok"
    assert (await claimer(user="u2")).reply == ["ended"]


# --- restock -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stock", "delta", "left"),
    [(10, 5, 15), (10, -4, 6), (10, -10, 0), (0, 3, 3), (10, 10**9, 10**9 + 10)],
    ids=["add", "remove", "remove-to-exactly-zero", "add-to-sold-out", "add-a-lot"],
)
async def test_restock_changes_stock_left(
    runner: ScriptRunner,
    redis_client: RedisClient,
    make_activity: MakeActivity,
    stock: int,
    delta: int,
    left: int,
) -> None:
    await make(make_activity, stock=stock)
    before = await snapshot(redis_client)

    reply = await change(runner, "restock", delta, operator="bob", event_id="ev-r", now=NOW + 3)

    assert reply == ["ok", left]
    event = assert_one_change(before, await snapshot(redis_client), {"stock_left": str(left)})
    assert_event(
        event,
        "stock_changed",
        before={"stock_left": stock},
        after={"stock_left": left},
        seq="2",
        at=NOW + 3,
        by="bob",
        event_id="ev-r",
        delta=str(delta),
    )
    # the event's JSON is written out whole, as the worker stores it
    assert event["before"] == f'{{"stock_left":{stock}}}' and event["after"] == f'{{"stock_left":{left}}}'


async def test_restock_on_a_paused_activity_is_allowed(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity
) -> None:
    await make(make_activity, status="paused", stock=2)
    assert await change(runner, "restock", 1) == ["ok", 3]
    assert await redis_client.hget(ACT.config, "status") == "paused"


@pytest.mark.parametrize("delta", [-11, -(10**9)])
async def test_removing_more_than_is_left_is_state_conflict(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity, delta: int
) -> None:
    await make(make_activity, stock=10)
    await refused(runner, redis_client, "restock", delta, "state_conflict")


async def test_removing_from_sold_out_is_state_conflict(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity, claimer: Claimer
) -> None:
    await make(make_activity, stock=1)
    assert (await claimer(user="u1")).outcome == "ok"
    await refused(runner, redis_client, "restock", -1, "state_conflict")


@pytest.mark.parametrize("delta", [5, -5])
async def test_restock_of_ended_is_state_conflict(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity, delta: int
) -> None:
    await make(make_activity, status="ended")
    await refused(runner, redis_client, "restock", delta, "state_conflict")


async def test_restock_up_to_the_budget_counting_packs_taken(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity, claimer: Claimer
) -> None:
    # face 500 a pack, budget 6000 = 12 packs ever available
    await make(make_activity, stock=10, budget=6000, face_per_pack=500)
    for user in ("u1", "u2"):
        assert (await claimer(user=user, device=f"d-{user}")).outcome == "ok"
    assert await redis_client.hmget(ACT.config, ["taken", "stock_left"]) == ["2", "8"]
    # (2 taken + 8 left + 3) x 500 = 6500 > 6000
    await refused(runner, redis_client, "restock", 3, "over_budget")
    # (2 + 8 + 2) x 500 = 6000: exactly the budget is allowed
    before = await snapshot(redis_client)
    assert await change(runner, "restock", 2) == ["ok", 10]
    assert_one_change(before, await snapshot(redis_client), {"stock_left": "10"})
    await refused(runner, redis_client, "restock", 1, "over_budget")


async def test_restock_counts_packs_reserved_for_codes_toward_the_budget(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity
) -> None:
    # face 500 a pack, budget 6000 = 12 packs ever available; 4 of the 10 go to a code batch
    await make(make_activity, stock=10, budget=6000, face_per_pack=500)
    keys = KeySpace.activity("act1")
    reply = await runner.run(
        "code_batch",
        [keys.config, keys.code_batches, keys.seq, keys.events],
        [NOW, "ev-b", "alice", "act1", "b1", 4, "reserve"],
    )
    assert reply == ["ok", 6]
    # (0 taken + 4 reserved + 6 left + 3) x 500 = 6500 > 6000
    await refused(runner, redis_client, "restock", 3, "over_budget")
    assert await change(runner, "restock", 2) == ["ok", 8]


async def test_removed_stock_frees_budget(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity
) -> None:
    await make(make_activity, stock=10, budget=5000, face_per_pack=500)
    await refused(runner, redis_client, "restock", 1, "over_budget")
    assert await change(runner, "restock", -4) == ["ok", 6]
    assert await change(runner, "restock", 4) == ["ok", 10]
    await refused(runner, redis_client, "restock", 1, "over_budget")


async def test_no_budget_is_never_over_budget(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity
) -> None:
    await make(make_activity, stock=10, budget="", face_per_pack=10**6)
    assert await change(runner, "restock", 10**9) == ["ok", 10**9 + 10]


async def test_removing_is_never_over_budget(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity
) -> None:
    # a config already past its budget (e.g. restored that way): taking stock away is always allowed
    await make(make_activity, stock=10, budget=1000, face_per_pack=500)
    await refused(runner, redis_client, "restock", 1, "over_budget")
    before = await snapshot(redis_client)
    assert await change(runner, "restock", -1) == ["ok", 9]
    assert_one_change(before, await snapshot(redis_client), {"stock_left": "9"})


async def test_zero_budget_refuses_any_addition(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity
) -> None:
    await make(make_activity, stock=0, budget=0, face_per_pack=500)
    await refused(runner, redis_client, "restock", 1, "over_budget")


async def test_restocked_sold_out_activity_claims_again(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity, claimer: Claimer
) -> None:
    await make(make_activity, stock=1)
    assert (await claimer(user="u1", device="d1")).outcome == "ok"
    assert (await claimer(user="u2", device="d2")).reply == ["sold_out"]
    assert await change(runner, "restock", 1) == ["ok", 1]
    assert (await claimer(user="u2", device="d2")).outcome == "ok"
    assert (await claimer(user="u3", device="d3")).reply == ["sold_out"]
    assert await redis_client.hmget(ACT.config, ["taken", "stock_left"]) == ["2", "0"]


async def test_stock_removed_to_zero_sells_out(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity, claimer: Claimer
) -> None:
    await make(make_activity, stock=3)
    assert await change(runner, "restock", -3) == ["ok", 0]
    assert (await claimer(user="u1")).reply == ["sold_out"]


# --- patch_activity ----------------------------------------------------------------------------------------

NOT_STARTED = {"starts_at": NOW + 600, "ends_at": NOW + 3600}


@pytest.mark.parametrize(
    "changes",
    [
        {"name": "renamed"},
        {"starts_at": NOW + 60},
        {"ends_at": NOW + 7200},
        {"per_user_limit": 3},
        {"per_device_limit": 2},
        {
            "name": "n",
            "starts_at": NOW + 1,
            "ends_at": NOW + 2,
            "per_user_limit": 10**6,
            "per_device_limit": 1,
        },
    ],
    ids=["name", "starts_at", "ends_at", "per_user_limit", "per_device_limit", "everything"],
)
async def test_patch_before_the_start(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity, changes: dict[str, Any]
) -> None:
    await make(make_activity, **NOT_STARTED)
    before = await snapshot(redis_client)
    stored_before = hot(before)

    reply = await change(runner, "patch_activity", patch(**changes), operator="bob", event_id="ev-p")

    assert reply == ["ok"]
    event = assert_one_change(before, await snapshot(redis_client), {k: str(v) for k, v in changes.items()})
    assert_event(
        event,
        "activity_patched",
        before=json.loads(event["before"]),
        after=changes,
        seq="2",
        by="bob",
        event_id="ev-p",
    )
    # before: the stored value of exactly the changed fields (compared as text; types are checked below)
    assert {k: str(v) for k, v in json.loads(event["before"]).items()} == {
        k: stored_before[k] for k in changes
    }


async def test_patch_name_after_the_start_is_ok(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity
) -> None:
    await make(make_activity)  # started 60 s ago
    before = await snapshot(redis_client)
    assert await change(runner, "patch_activity", patch(name="späti / 2")) == ["ok"]
    event = assert_one_change(before, await snapshot(redis_client), {"name": "späti / 2"})
    assert_event(event, "activity_patched", before={"name": "sale"}, after={"name": "späti / 2"}, seq="2")


async def test_patch_name_of_paused_after_the_start_is_ok(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity
) -> None:
    await make(make_activity, status="paused")
    assert await change(runner, "patch_activity", patch(name="x")) == ["ok"]
    assert await redis_client.hmget(ACT.config, ["name", "status"]) == ["x", "paused"]


@pytest.mark.parametrize(
    "changes",
    [
        {"starts_at": NOW + 60},
        {"ends_at": NOW + 7200},
        {"per_user_limit": 3},
        {"per_device_limit": 2},
        {"name": "also", "per_user_limit": 3},
    ],
    ids=["starts_at", "ends_at", "per_user_limit", "per_device_limit", "name-with-a-limit"],
)
@pytest.mark.parametrize("offset", [0, 1, 60], ids=["at-the-start", "a-second-after", "a-minute-after"])
async def test_patch_window_or_limits_after_the_start_is_state_conflict(
    runner: ScriptRunner,
    redis_client: RedisClient,
    make_activity: MakeActivity,
    changes: dict[str, Any],
    offset: int,
) -> None:
    await make(make_activity, starts_at=NOW - offset, ends_at=NOW + 3600)
    await refused(runner, redis_client, "patch_activity", patch(**changes), "state_conflict")


async def test_patch_a_second_before_the_start_is_ok(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity
) -> None:
    await make(make_activity, starts_at=NOW + 1, ends_at=NOW + 3600)
    assert await change(runner, "patch_activity", patch(per_user_limit=2)) == ["ok"]
    assert await redis_client.hget(ACT.config, "per_user_limit") == "2"


@pytest.mark.parametrize("changes", [{"name": "x"}, {"per_user_limit": 2}])
async def test_patch_of_ended_is_state_conflict(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity, changes: dict[str, Any]
) -> None:
    await make(make_activity, status="ended", **NOT_STARTED)
    await refused(runner, redis_client, "patch_activity", patch(**changes), "state_conflict")


@pytest.mark.parametrize(
    "changes",
    [
        {"starts_at": NOW + 100, "ends_at": NOW + 100},
        {"starts_at": NOW + 100, "ends_at": NOW + 99},
        {"ends_at": NOW + 600},  # only the end, equal to the stored start
        {"ends_at": NOW + 300},  # only the end, before the stored start
        {"starts_at": NOW + 3600},  # only the start, equal to the stored end
        {"starts_at": NOW + 4000},  # only the start, after the stored end
    ],
    ids=[
        "both-equal",
        "both-backwards",
        "end-at-stored-start",
        "end-before-stored-start",
        "start-at-stored-end",
        "start-after-stored-end",
    ],
)
async def test_patch_window_not_ending_after_it_starts_is_invalid(
    runner: ScriptRunner,
    redis_client: RedisClient,
    make_activity: MakeActivity,
    changes: dict[str, Any],
) -> None:
    await make(make_activity, **NOT_STARTED)
    await refused(runner, redis_client, "patch_activity", patch(**changes), "invalid_request")


async def test_patch_one_end_past_the_other_together_is_ok(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity
) -> None:
    """Moving the whole window later in one patch: the new start is past the stored end, the new end too."""
    await make(make_activity, **NOT_STARTED)
    changes = {"starts_at": NOW + 5000, "ends_at": NOW + 9000}
    assert await change(runner, "patch_activity", patch(**changes)) == ["ok"]
    assert await redis_client.hmget(ACT.config, ["starts_at", "ends_at"]) == [
        str(NOW + 5000),
        str(NOW + 9000),
    ]


async def test_patch_stores_large_integers_exactly(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity
) -> None:
    await make(make_activity, **NOT_STARTED)
    before = await snapshot(redis_client)
    changes = {"starts_at": 2**40 - 1, "ends_at": 2**40, "per_user_limit": 10**6}
    assert await change(runner, "patch_activity", patch(**changes)) == ["ok"]
    event = assert_one_change(
        before,
        await snapshot(redis_client),
        {
            "starts_at": "1099511627775",
            "ends_at": "1099511627776",
            "per_user_limit": "1000000",
        },
    )
    assert json.loads(event["after"]) == changes
    for text in ("1099511627775", "1099511627776", "1000000"):
        assert text in event["after"]  # not 1.0995116277760e+12


async def test_patch_event_before_keeps_the_stored_types(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity
) -> None:
    """The audit's before and after of one patch should be comparable: numbers on both sides."""
    await make(make_activity, per_user_limit=1, **NOT_STARTED)
    assert await change(runner, "patch_activity", patch(per_user_limit=2, ends_at=NOW + 7200)) == ["ok"]
    event = await last_event(redis_client, ACT.events)
    assert json.loads(event["after"]) == {"per_user_limit": 2, "ends_at": NOW + 7200}
    assert json.loads(event["before"]) == {"per_user_limit": 1, "ends_at": NOW + 3600}


async def test_patched_limit_before_the_start_binds_after_it(
    runner: ScriptRunner, redis_client: RedisClient, make_activity: MakeActivity, claimer: Claimer
) -> None:
    await make(make_activity, per_user_limit=1, **NOT_STARTED)
    assert (await claimer(user="u1", now=NOW)).reply == ["not_started"]
    assert await change(runner, "patch_activity", patch(per_user_limit=2)) == ["ok"]
    start = NOW + 600
    # after the start the limit can no longer change, and the patched one holds
    await refused(
        runner, redis_client, "patch_activity", patch(per_user_limit=5), "state_conflict", now=start
    )
    assert (await claimer(user="u1", device="d1", now=start)).outcome == "ok"
    assert (await claimer(user="u1", device="d2", now=start)).outcome == "ok"
    assert (await claimer(user="u1", device="d3", now=start)).reply == ["limit_reached"]
    assert (await claimer(user="u2", device="d4", now=start)).outcome == "ok"


async def test_patched_device_limit_binds(
    runner: ScriptRunner, make_activity: MakeActivity, claimer: Claimer
) -> None:
    await make(make_activity, per_user_limit=5, per_device_limit=0, **NOT_STARTED)
    assert await change(runner, "patch_activity", patch(per_device_limit=1)) == ["ok"]
    start = NOW + 600
    assert (await claimer(user="u1", device="d1", now=start)).outcome == "ok"
    assert (await claimer(user="u2", device="d1", now=start)).reply == ["limit_reached"]


async def test_patched_window_moves_the_claims(
    runner: ScriptRunner, make_activity: MakeActivity, claimer: Claimer
) -> None:
    await make(make_activity, **NOT_STARTED)
    assert await change(runner, "patch_activity", patch(starts_at=NOW + 10, ends_at=NOW + 20)) == ["ok"]
    assert (await claimer(user="u1", now=NOW + 9)).reply == ["not_started"]
    assert (await claimer(user="u1", now=NOW + 20)).reply == ["ended"]
    assert (await claimer(user="u1", now=NOW + 10)).outcome == "ok"
