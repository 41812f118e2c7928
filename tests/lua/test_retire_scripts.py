"""retire_activity and revive_activity against real Redis (cluster mode): each reply, and every key each one
touches, before and after; and the scripts a retired partition meets (claim, the operators' changes, the mirror)
answering without writing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.events import SCHEMA_VERSION
from gateway.keys import KeySpace
from gateway.scripts.calls import catalog as catalog_calls
from gateway.scripts.calls import retire as calls
from gateway.scripts.runner import RedisClient, ScriptRunner
from tests.lua.support import (
    DEFAULT_PACK,
    HASH_A,
    NOW,
    Claimer,
    activity_config,
    changed,
    put_activity,
    script_error,
    snapshot,
)

ACT = KeySpace.activity("act1")
PARTITION_KEYS = {
    ACT.config,
    ACT.user_counts,
    ACT.device_counts,
    ACT.allow_list,
    ACT.code_batches,
    ACT.seq,
    ACT.events,
    ACT.dead_letters,
}
ENDED = {"starts_at": NOW - 7200, "ends_at": NOW - 3600}
PACK = json.dumps(DEFAULT_PACK)
CONFIG = [
    *["status", "active", "starts_at", str(NOW - 7200), "ends_at", str(NOW - 3600), "stock_left", "7"],
    *["taken", "3", "per_user_limit", "1", "per_device_limit", "0", "elig", "", "pack", PACK],
]


async def retire(runner: ScriptRunner, *, cutoff: int = NOW - 60, mark: int | None = None) -> list[Any]:
    seq = await runner.control.get(ACT.seq)
    return await calls.retire_activity(
        runner,
        calls.RetireActivityKeys.of(ACT),
        now=NOW,
        cutoff=cutoff,
        mark=int(seq or 0) if mark is None else mark,
    )


async def revive(
    runner: ScriptRunner,
    step: calls.ReviveStep = "finish",
    *,
    at_least: int = 0,
    event_id: str = "ev-revive",
    **payload: list[str],
) -> list[Any]:
    return await calls.revive_activity(
        runner,
        calls.ReviveActivityKeys.of(ACT),
        step=step,
        now=NOW + 5,
        event_id=event_id,
        operator="bob",
        at_least=at_least,
        payload=json.dumps(payload),
        summary=json.dumps({"at_least": at_least, "users": 1}),
    )


async def ended_activity(runner: ScriptRunner, client: RedisClient, claimer: Claimer) -> str:
    """An ended activity with a claim (a keyed grant: its idempotency record, whose key is returned), an
    allow-list, a device's count, a code batch, and a dead-letter stream that was emptied (XADD then XDEL leaves
    the key)."""
    config = activity_config(now=NOW - 7000, **ENDED)
    assert (await put_activity(runner, "act1", config, allow=["u1"], now=NOW - 7000))[0] == "ok"
    claimed = await claimer(now=NOW - 6000, key="k1", mode="grant", operator="alice", device="")
    assert claimed.outcome == "ok", claimed.reply
    await client.hset(ACT.device_counts, "d9", "1")
    await client.hset(ACT.code_batches, "b1", "2")
    dead = await client.xadd(ACT.dead_letters, {"entry": "x"})
    await client.xdel(ACT.dead_letters, dead)
    return claimed.idem


# --- retire_activity -----------------------------------------------------------------------------------------


async def test_retire_deletes_the_partition_and_leaves_its_marker(
    runner: ScriptRunner, redis_client: RedisClient, claimer: Claimer
) -> None:
    record = await ended_activity(runner, redis_client, claimer)
    before = await snapshot(redis_client)
    assert set(before) >= PARTITION_KEYS

    reply = await retire(runner, mark=2)

    assert reply == ["ok", 2]
    after = await snapshot(redis_client)
    assert changed(before, after) == PARTITION_KEYS | {ACT.retired}
    assert not PARTITION_KEYS & set(after)
    assert after[ACT.retired] == ("string", "2", -1)  # the seq at retirement, kept without expiry
    assert after[record] == before[record]  # idempotency records expire by themselves
    assert before[record][2] > 0


async def test_retire_at_the_cutoff_exactly(runner: ScriptRunner, redis_client: RedisClient) -> None:
    assert (await put_activity(runner, "act1", activity_config(**ENDED)))[0] == "ok"
    assert await retire(runner, cutoff=NOW - 3600) == ["ok", 1]


async def test_retire_again_is_a_replay_that_writes_nothing(
    runner: ScriptRunner, redis_client: RedisClient, claimer: Claimer
) -> None:
    await ended_activity(runner, redis_client, claimer)
    assert (await retire(runner, mark=2))[0] == "ok"
    before = await snapshot(redis_client)

    assert await retire(runner, mark=2) == ["replay", "2"]
    assert await retire(runner, mark=9) == ["replay", "2"]  # whatever the mark now: retired is retired

    assert await snapshot(redis_client) == before


async def test_retire_of_nothing_is_not_found(runner: ScriptRunner, redis_client: RedisClient) -> None:
    assert await retire(runner, mark=0) == ["not_found"]
    assert await snapshot(redis_client) == {}


@pytest.mark.parametrize(
    ("setup", "why"),
    [
        ("not_ended", "not_ended"),
        ("behind", "behind"),
        ("ahead", "behind"),
        ("dead_letters", "dead_letters"),
    ],
)
async def test_retire_refusals_write_nothing(
    setup: str, why: str, runner: ScriptRunner, redis_client: RedisClient, claimer: Claimer
) -> None:
    await ended_activity(runner, redis_client, claimer)
    cutoff, mark = NOW - 60, 2
    if setup == "not_ended":
        cutoff = NOW - 3601  # a second before its end
    elif setup == "behind":
        mark = 3  # the ledger holds more than Redis: never retire what would lose it
    elif setup == "ahead":
        mark = 1  # the ledger does not hold everything yet
    else:
        await redis_client.xadd(ACT.dead_letters, {"entry": "y", "reason": "bad"})
    before = await snapshot(redis_client)

    assert await retire(runner, cutoff=cutoff, mark=mark) == ["state_conflict", why]

    assert await snapshot(redis_client) == before


async def test_retire_with_a_cutoff_after_now_is_an_error(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    assert (await put_activity(runner, "act1", activity_config(**ENDED)))[0] == "ok"
    before = await snapshot(redis_client)
    with script_error("cutoff"):
        await retire(runner, cutoff=NOW + 1)
    assert await snapshot(redis_client) == before


# --- what a retired partition answers -----------------------------------------------------------------------


async def retired(runner: ScriptRunner, client: RedisClient, claimer: Claimer) -> None:
    await ended_activity(runner, client, claimer)
    assert (await retire(runner, mark=2))[0] == "ok"


async def test_claim_on_a_retired_partition_is_ended_and_writes_nothing(
    runner: ScriptRunner, redis_client: RedisClient, claimer: Claimer
) -> None:
    await retired(runner, redis_client, claimer)
    before = await snapshot(redis_client)

    assert (await claimer(user="u2")).reply == ["ended", "retired"]
    assert (await claimer(user="u2", mode="grant", operator="alice")).reply == ["ended", "retired"]
    # A keyed retry of a claim made before the retirement still replays from its record.
    replay = await claimer(key="k1", mode="grant", operator="alice", device="")
    assert replay.outcome == "replay"

    assert await snapshot(redis_client) == before
    assert (await claimer("act-unknown")).reply == ["not_found"]  # no marker: an unknown activity


@pytest.mark.parametrize(
    ("script", "argument"),
    [("set_status", "pause"), ("restock", 5), ("patch_activity", json.dumps({"name": "late"}))],
)
async def test_operators_changes_on_a_retired_partition_write_nothing(
    script: str, argument: str | int, runner: ScriptRunner, redis_client: RedisClient, claimer: Claimer
) -> None:
    await retired(runner, redis_client, claimer)
    before = await snapshot(redis_client)
    arguments: list[str | int] = [NOW, "ev-1", "alice", "act1", argument]
    if script == "restock":
        arguments += [500, ""]

    reply = await runner.run(script, catalog_calls.ActivityChangeKeys.of(ACT), arguments)

    assert reply == ["state_conflict", "retired"]
    assert await snapshot(redis_client) == before


async def test_a_retired_partition_is_never_mirrored_afresh(
    runner: ScriptRunner, redis_client: RedisClient, claimer: Claimer
) -> None:
    await retired(runner, redis_client, claimer)
    before = await snapshot(redis_client)
    assert await put_activity(runner, "act1", activity_config(**ENDED)) == ["replay"]
    assert await snapshot(redis_client) == before


# --- revive_activity -----------------------------------------------------------------------------------------


async def test_revive_finish_brings_the_partition_back(
    runner: ScriptRunner, redis_client: RedisClient, claimer: Claimer
) -> None:
    await retired(runner, redis_client, claimer)
    before = await snapshot(redis_client)

    reply = await revive(
        runner,
        at_least=2,
        config=CONFIG,
        users=["u1", "1"],
        devices=["d9", "1"],
        allow=["u1"],
        batches=["b1", "2"],
    )

    assert reply == ["ok", 3]  # the seq carried on past the marker
    after = await snapshot(redis_client)
    revived_keys = {ACT.config, ACT.user_counts, ACT.device_counts, ACT.allow_list, ACT.code_batches}
    assert changed(before, after) == revived_keys | {ACT.seq, ACT.events, ACT.retired}
    assert ACT.retired not in after
    assert after[ACT.config][1] == dict(zip(CONFIG[::2], CONFIG[1::2], strict=True))
    assert after[ACT.user_counts][1] == {"u1": "1"}
    assert after[ACT.device_counts][1] == {"d9": "1"}
    assert after[ACT.allow_list][1] == ["u1"]
    assert after[ACT.code_batches][1] == {"b1": "2"}
    assert after[ACT.seq] == ("string", "3", -1)
    stream = after[ACT.events][1]
    assert [group["name"] for group in stream["groups"]] == [ACT.events]
    [(_, fields)] = stream["entries"]
    assert fields == {
        "type": "restored",
        "v": str(SCHEMA_VERSION),
        "id": "ev-revive",
        "seq": "3",
        "at": str(NOW + 5),
        "by": "bob",
        "after": json.dumps({"at_least": 2, "users": 1}),
    }


@pytest.mark.parametrize(("marker", "at_least", "seq", "expected"), [(2, 5, None, 6), (2, 0, "9", 10)])
async def test_revive_sets_the_seq_past_the_marker_the_mark_and_any_seq(
    marker: int,
    at_least: int,
    seq: str | None,
    expected: int,
    runner: ScriptRunner,
    redis_client: RedisClient,
    claimer: Claimer,
) -> None:
    await retired(runner, redis_client, claimer)
    assert await redis_client.get(ACT.retired) == str(marker)
    if seq is not None:
        await redis_client.set(ACT.seq, seq)  # a stray write while retired (a keyed grant call closing)
    assert await revive(runner, at_least=at_least, config=CONFIG) == ["ok", expected]
    assert await redis_client.get(ACT.seq) == str(expected)


async def test_revive_in_parts_writes_counts_and_only_finish_makes_it_live(
    runner: ScriptRunner, redis_client: RedisClient, claimer: Claimer
) -> None:
    await retired(runner, redis_client, claimer)
    before = await snapshot(redis_client)

    assert await revive(runner, "part", users=["u1", "1"], devices=["d9", "1"]) == ["ok", ""]

    middle = await snapshot(redis_client)
    assert changed(before, middle) == {ACT.user_counts, ACT.device_counts}
    assert middle[ACT.retired] == before[ACT.retired]  # still retired: claims still answer ended
    assert (await claimer(user="u2", mode="grant", operator="alice")).reply == ["ended", "retired"]

    assert (await revive(runner, "part", users=["u3", "2"], allow=["u1"]))[0] == "ok"
    assert (await revive(runner, config=CONFIG, batches=["b1", "2"]))[0] == "ok"

    after = await snapshot(redis_client)
    assert after[ACT.user_counts][1] == {"u1": "1", "u3": "2"}
    assert after[ACT.allow_list][1] == ["u1"]
    assert after[ACT.code_batches][1] == {"b1": "2"}
    assert ACT.retired not in after


async def test_a_second_revival_writes_nothing_once_the_first_finished(
    runner: ScriptRunner, redis_client: RedisClient, claimer: Claimer
) -> None:
    """Two gateways reviving at once: the later one's parts and finish, after the first's finish, must not
    write over counts a grant changed since."""
    await retired(runner, redis_client, claimer)
    assert (await revive(runner, "part", users=["u1", "1"]))[0] == "ok"  # the second gateway's first part
    assert (await revive(runner, config=CONFIG, users=["u1", "1"], event_id="ev-first"))[0] == "ok"
    granted = await claimer(user="u1", mode="grant", operator="alice", device="")
    assert granted.reply[0] == "limit_reached"  # per-user limit 1: as before retirement
    await redis_client.hset(ACT.user_counts, "u1", "5")  # stands for a change made after the revival
    before = await snapshot(redis_client)

    assert await revive(runner, "part", users=["u1", "1"]) == ["replay"]
    assert await revive(runner, config=CONFIG, users=["u1", "1"], event_id="ev-second") == ["replay"]

    assert await snapshot(redis_client) == before


async def test_revive_of_nothing_is_not_found(runner: ScriptRunner, redis_client: RedisClient) -> None:
    assert await revive(runner, config=CONFIG) == ["not_found"]
    assert await revive(runner, "part", users=["u1", "1"]) == ["not_found"]
    assert await snapshot(redis_client) == {}


async def test_revive_of_a_live_partition_is_a_replay(
    runner: ScriptRunner, redis_client: RedisClient, claimer: Claimer
) -> None:
    await ended_activity(runner, redis_client, claimer)
    before = await snapshot(redis_client)
    assert await revive(runner, config=CONFIG, users=["u1", "9"]) == ["replay"]
    assert await snapshot(redis_client) == before


async def test_claims_after_a_revival_continue_the_seq(
    runner: ScriptRunner, redis_client: RedisClient, claimer: Claimer
) -> None:
    await retired(runner, redis_client, claimer)
    assert await revive(runner, at_least=2, config=CONFIG, users=["u1", "1"]) == ["ok", 3]

    granted = await claimer(user="u2", mode="grant", operator="alice", device="", body=HASH_A)

    assert granted.outcome == "ok", granted.reply
    fields = (await redis_client.xrevrange(ACT.events, count=1))[0][1]
    assert fields["type"] == "claimed" and fields["seq"] == "4" and fields["ordinal"] == "4"
