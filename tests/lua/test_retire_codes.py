"""retire_codes against real Redis: a batch's codes in a bucket leave whatever their state (another batch's stay),
the record with the last chunk, each call that removes something recorded once; a repeat writes nothing; a batch
whose window ends after the cutoff is refused untouched; every key checked."""

from __future__ import annotations

from typing import Any

from gateway.codes.batches import batch_record
from gateway.events import SCHEMA_VERSION
from gateway.scripts.calls.codes import RetireCodesKeys, retire_codes
from gateway.scripts.runner import RedisClient, ScriptRunner
from tests.lua.support import NOW, changed, snapshot
from tests.lua.test_code_scripts import (
    B1,
    BUCKET,
    CODES,
    USER,
    appended,
    claim_answer,
    put_codes,
    redeem_code,
    refused,
    value,
)

RETENTION = 30 * 86_400
ENDS_AT = NOW + 3600  # B1's window ends then
DUE = ENDS_AT + RETENTION  # the first second the batch may leave
B2 = batch_record("act2", NOW - 60, NOW + 7 * 86_400, "[]")


async def retire(
    runner: ScriptRunner,
    hashes: list[str],
    *,
    now: int = DUE,
    last: bool = True,
    batch_id: str = "b1",
    event_id: str = "ev-x",
) -> list[Any]:
    return await retire_codes(
        runner,
        RetireCodesKeys.of(BUCKET),
        now=now,
        event_id=event_id,
        cutoff=now - RETENTION,
        batch_id=batch_id,
        last=last,
        hashes=hashes,
    )


async def two_batches(runner: ScriptRunner) -> str:
    """b1's CODES[0:3] (the first redeemed by USER) and b2's CODES[3]; the redeem's answer."""
    assert await put_codes(runner, CODES[:3]) == ["ok", 3]
    assert await put_codes(runner, CODES[3:4], batch_id="b2", batch=B2, event_id="ev-p2") == ["ok", 1]
    redeemed = await redeem_code(runner, CODES[0], claim_id="c1")
    assert redeemed == ["ok", claim_answer("c1"), "act1"]
    return str(redeemed[1])


async def test_every_code_of_the_batch_leaves_with_its_record_and_another_batch_stays(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await two_batches(runner)
    before = await snapshot(redis_client)

    assert await retire(runner, CODES[:4]) == ["ok", 3]  # CODES[3] is b2's: named, and left alone

    after = await snapshot(redis_client)
    assert changed(before, after) == {BUCKET.codes, BUCKET.batches, BUCKET.seq, BUCKET.events}
    assert value(after, BUCKET.codes) == {CODES[3]: '{"batch":"b2"}'}
    assert value(after, BUCKET.batches) == {"b2": B2}
    assert value(after, BUCKET.counters) == value(before, BUCKET.counters) == {"act1": "1"}  # figures stay
    assert value(after, BUCKET.seq) == str(int(value(before, BUCKET.seq)) + 1)
    assert appended(before, after, BUCKET.events) == [
        {
            "type": "codes_retired",
            "v": str(SCHEMA_VERSION),
            "id": "ev-x",
            "seq": value(after, BUCKET.seq),
            "at": str(DUE),
            "batch": "b1",
            "count": "3",
        }
    ]
    assert all(after[key][2] == -1 for key in changed(before, after))


async def test_after_it_a_redeem_of_the_code_is_invalid_even_for_its_redeemer(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    answer = await two_batches(runner)
    # Within the retention the redeemer's repeat replays its first answer (the tombstone), to the last second.
    replay = ["replay", answer, "act1"]
    await refused(redis_client, redeem_code(runner, CODES[0], now=DUE - 1, claim_id="c9"), replay)
    await refused(redis_client, retire(runner, CODES[:3], now=DUE - 1), ["state_conflict"])

    assert await retire(runner, CODES[:3]) == ["ok", 3]

    for code, user in ((CODES[0], USER), (CODES[0], "u2"), (CODES[1], "u2")):
        await refused(
            redis_client, redeem_code(runner, code, user=user, now=DUE, claim_id="c9"), ["invalid_code"]
        )


async def test_chunks_keep_the_record_until_the_last(runner: ScriptRunner, redis_client: RedisClient) -> None:
    await two_batches(runner)

    first = await snapshot(redis_client)
    assert await retire(runner, CODES[:2], last=False, event_id="ev-1") == ["ok", 2]
    mid = await snapshot(redis_client)
    assert changed(first, mid) == {BUCKET.codes, BUCKET.seq, BUCKET.events}
    assert value(mid, BUCKET.batches) == {"b1": B1, "b2": B2}  # CODES[2] still needs it
    [event] = appended(first, mid, BUCKET.events)
    assert (event["type"], event["id"], event["count"]) == ("codes_retired", "ev-1", "2")

    assert await retire(runner, CODES[2:3], event_id="ev-2") == ["ok", 1]
    end = await snapshot(redis_client)
    assert changed(mid, end) == {BUCKET.codes, BUCKET.batches, BUCKET.seq, BUCKET.events}
    assert value(end, BUCKET.codes) == {CODES[3]: '{"batch":"b2"}'}
    assert value(end, BUCKET.batches) == {"b2": B2}
    [event] = appended(mid, end, BUCKET.events)
    assert (event["id"], event["count"], event["seq"]) == ("ev-2", "1", value(end, BUCKET.seq))


async def test_a_repeat_finds_nothing_and_writes_nothing(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    """Idempotent: the sweep finishes a pass cut short by running the whole batch again."""
    await two_batches(runner)
    assert await retire(runner, CODES[:3]) == ["ok", 3]

    await refused(redis_client, retire(runner, CODES[:3], event_id="ev-again"), ["ok", 0])
    await refused(redis_client, retire(runner, CODES[:3], last=False, event_id="ev-again"), ["ok", 0])


async def test_the_last_chunk_takes_the_record_even_when_its_codes_are_gone(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    """A pass cut short after its codes left and before its last chunk: the next removes the record alone."""
    await two_batches(runner)
    assert await retire(runner, CODES[:3], last=False) == ["ok", 3]
    before = await snapshot(redis_client)

    assert await retire(runner, CODES[:3], event_id="ev-rec") == ["ok", 0]

    after = await snapshot(redis_client)
    assert changed(before, after) == {BUCKET.batches, BUCKET.seq, BUCKET.events}
    assert value(after, BUCKET.batches) == {"b2": B2}
    [event] = appended(before, after, BUCKET.events)
    assert (event["type"], event["batch"], event["count"]) == ("codes_retired", "b1", "0")


async def test_a_batch_whose_window_ends_after_the_cutoff_is_refused_untouched(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    """The bucket's own record is the last word: a window that has not ended the retention ago (the ledger
    wrong, or a sweep's clock) removes nothing, whatever the caller asked."""
    await two_batches(runner)
    for now in (DUE - 1, NOW, ENDS_AT):
        await refused(redis_client, retire(runner, CODES[:3], now=now), ["state_conflict"])
    await refused(redis_client, retire(runner, CODES[3:4], batch_id="b2"), ["state_conflict"])
    assert await retire(runner, CODES[:3], now=DUE + 86_400) == ["ok", 3]  # any time after is fine
