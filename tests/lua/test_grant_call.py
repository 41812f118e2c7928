"""The grant_call script against real Redis: each reply, and every key it touches (the call's record, the results
kept while it is open, seq and the event it appends when the call closes)."""

from __future__ import annotations

import time
from typing import Any

from gateway.events import SCHEMA_VERSION
from gateway.keys import KeySpace
from gateway.scripts.runner import RedisClient, ScriptRunner
from tests.lua.support import HASH_A, HASH_B, NOW, Snapshot, changed, last_event, script_error, snapshot

ACT = KeySpace.activity("act1")
RECORD, RESULTS = ACT.grant_call("alice", "push-1"), ACT.grant_results("alice", "push-1")
EVERY_KEY = {RECORD, RESULTS, ACT.seq, ACT.events}
TTL = 90_000
R1 = '{"user_id":"u1","claim_id":"c1"}'
R2 = '{"user_id":"u2","error":"sold_out"}'
R3 = '{"user_id":"u3","claim_id":"c3"}'


async def grant_call(
    runner: ScriptRunner,
    step: str,
    users: int | str = "",
    results: dict[int, str] | None = None,
    *,
    body: str = HASH_A,
    event_id: str = "ev-1",
    now: int = NOW,
) -> list[Any]:
    """The script's call as GrantService makes it: ``results`` by place (1-based)."""
    lines = "\n".join(f"{place} {result}" for place, result in sorted((results or {}).items()))
    return await runner.run(
        "grant_call",
        [RECORD, RESULTS, ACT.seq, ACT.events],
        [now, event_id, "alice", "act1", body, TTL, step, users, lines],
    )


def expires_in(shot: Snapshot, key: str) -> float:
    """Seconds until ``key`` expires, from the snapshot's absolute expiry."""
    return shot[key][2] / 1000 - time.time()


async def test_open_records_a_new_call(runner: ScriptRunner, redis_client: RedisClient) -> None:
    before = await snapshot(redis_client)
    assert await grant_call(runner, "open") == ["ok", ""]
    after = await snapshot(redis_client)
    assert changed(before, after) == {RECORD}
    assert after[RECORD][1] == HASH_A + "|"
    assert TTL - 5 < expires_in(after, RECORD) <= TTL


async def test_settle_keeps_final_results_until_every_user_has_one(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await grant_call(runner, "open")
    before = await snapshot(redis_client)

    assert await grant_call(runner, "settle", 3, {1: R1, 2: R2}) == ["pending", ""]

    after = await snapshot(redis_client)
    assert changed(before, after) == {RESULTS}  # no seq, no event: the call is not closed
    assert after[RESULTS][1] == {"1": R1, "2": R2}
    assert abs(after[RESULTS][2] - after[RECORD][2]) < 2_000  # never outlives the record
    assert after[RECORD] == before[RECORD]

    # A retry's open gets them back; the third user is the one to judge again.
    assert await grant_call(runner, "open") == ["pending", f"1 {R1}\n2 {R2}"]
    assert await snapshot(redis_client) == after


async def test_settle_closes_the_call_once_complete(runner: ScriptRunner, redis_client: RedisClient) -> None:
    await grant_call(runner, "open")
    await grant_call(runner, "settle", 3, {1: R1, 2: R2})
    before = await snapshot(redis_client)

    other_first = '{"user_id":"u1","error":"limit_reached"}'  # a racing attempt's later result for user 1
    reply = await grant_call(runner, "settle", 3, {1: other_first, 3: R3}, event_id="ev-close")

    answer = f'{{"results":[{R1},{R2},{R3}]}}'  # the first final result of each user, in the body's order
    assert reply == ["ok", answer]
    after = await snapshot(redis_client)
    assert changed(before, after) == EVERY_KEY
    assert RESULTS not in after
    assert after[RECORD][1] == f"{HASH_A}|{answer}"
    assert TTL - 5 < expires_in(after, RECORD) <= TTL
    assert after[ACT.seq][1] == "1"
    assert await last_event(redis_client, ACT.events) == {
        "type": "grant_call_recorded",
        "v": str(SCHEMA_VERSION),
        "id": "ev-close",
        "seq": "1",
        "at": str(NOW),
        "activity": "act1",
        "by": "alice",
        "idem": RECORD,
        "idem_hash": HASH_A,
        "idem_expires": str(NOW + TTL),
        "answer": answer,
    }

    # Closed: open and settle replay the answer and write nothing.
    assert await grant_call(runner, "open") == ["replay", answer]
    assert await grant_call(runner, "settle", 3, {2: R2}) == ["replay", answer]
    assert await snapshot(redis_client) == after


async def test_a_call_judged_whole_at_once_closes_in_one_settle(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await grant_call(runner, "open")
    reply = await grant_call(runner, "settle", 2, {2: R2, 1: R1})
    assert reply == ["ok", f'{{"results":[{R1},{R2}]}}']
    assert await redis_client.exists(RESULTS) == 0


async def test_another_body_is_a_conflict_and_writes_nothing(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await grant_call(runner, "open")
    await grant_call(runner, "settle", 2, {1: R1})
    before = await snapshot(redis_client)
    assert await grant_call(runner, "open", body=HASH_B) == ["idempotency_conflict"]
    assert await grant_call(runner, "settle", 2, {2: R2}, body=HASH_B) == ["idempotency_conflict"]
    assert await snapshot(redis_client) == before


async def test_results_a_lost_record_left_are_not_this_calls(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await grant_call(runner, "open")
    await grant_call(runner, "settle", 2, {1: R1})
    await redis_client.delete(RECORD)  # as if it expired (the results would go at the same moment)

    assert await grant_call(runner, "open") == ["ok", ""]
    assert await redis_client.exists(RESULTS) == 0
    assert await redis_client.get(RECORD) == HASH_A + "|"


async def test_settle_after_the_record_was_lost_opens_it_again(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    assert await grant_call(runner, "settle", 2, {1: R1}) == ["pending", ""]
    after = await snapshot(redis_client)
    assert after[RECORD][1] == HASH_A + "|"
    assert after[RESULTS][1] == {"1": R1}
    assert ACT.seq not in after and ACT.events not in after


async def test_settle_with_nothing_new_changes_nothing(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await grant_call(runner, "open")
    await grant_call(runner, "settle", 2, {1: R1})
    before = await snapshot(redis_client)
    assert await grant_call(runner, "settle", 2, {1: R2}) == ["pending", ""]  # user 1 keeps its first result
    after = await snapshot(redis_client)
    assert after[RESULTS][1] == before[RESULTS][1]
    assert changed(before, after) <= {RESULTS}  # at most its expiry, levelled with the record's again


async def test_a_place_outside_the_call_is_refused_before_any_write(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await grant_call(runner, "open")
    before = await snapshot(redis_client)
    with script_error("result line"):
        await grant_call(runner, "settle", 2, {1: R1, 3: R3})
    with script_error("result line"):
        await runner.run(
            "grant_call",
            [RECORD, RESULTS, ACT.seq, ACT.events],
            [NOW, "ev", "alice", "act1", HASH_A, TTL, "settle", 2, f"1 {R1}\nno place here"],
        )
    assert await snapshot(redis_client) == before
