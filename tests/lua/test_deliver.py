"""The deliver script against real Redis (and ClaimService, which calls claim then deliver)."""

from __future__ import annotations

import json

import pytest

from gateway.claim.service import ClaimService, body_hash
from gateway.events import SCHEMA_VERSION
from gateway.keys import KeySpace
from gateway.outcomes import DomainError, Outcome
from gateway.scripts.runner import RedisClient, ScriptRunner
from gateway.settings import Settings
from gateway.tokens import UserIdentity
from tests.lua.conftest import MakeActivity
from tests.lua.support import DAY, NOW, Claimer, changed, deliver, last_event, snapshot

PACK = [
    {"template_id": "t1", "count": 2, "valid_days": 7},
    {"template_id": "t2", "count": 1, "valid_from": NOW - 100, "valid_until": NOW + 1000},
]


async def claimed_answer(
    claimer: Claimer, make_activity: MakeActivity, claim_id: str = "c1", user: str = "u1"
) -> str:
    await make_activity(pack=PACK, stock=10, per_user_limit=10)
    done = await claimer(user=user, claim_id=claim_id)
    assert done.outcome == "ok"
    return done.answer


def record(claim_id: str, template: str, valid_from: int, valid_until: int) -> dict[str, object]:
    return {
        "user": "u1",
        "activity": "act1",
        "template": template,
        "claim": claim_id,
        "valid_from": valid_from,
        "valid_until": valid_until,
        "status": "available",
        "version": 1,
    }


async def test_deliver_creates_coupons_index_seq_and_event(
    runner: ScriptRunner,
    claimer: Claimer,
    make_activity: MakeActivity,
    keyspace: KeySpace,
    redis_client: RedisClient,
) -> None:
    answer = await claimed_answer(claimer, make_activity)
    wallet = keyspace.wallet("u1")
    before = await snapshot(redis_client)

    assert await deliver(runner, wallet, "u1", "act1", answer, event_id="e1", now=NOW + 5) == ["ok"]

    after = await snapshot(redis_client)
    assert changed(before, after) == {
        wallet.coupons,
        wallet.user_index("u1"),
        wallet.expiring,
        wallet.seq,
        wallet.events,
    }
    coupons = {cid: json.loads(text) for cid, text in after[wallet.coupons][1].items()}
    assert coupons == {
        "c1.1": record("c1", "t1", NOW, NOW + 7 * DAY),
        "c1.2": record("c1", "t1", NOW, NOW + 7 * DAY),
        "c1.3": record("c1", "t2", NOW - 100, NOW + 1000),
    }
    assert after[wallet.user_index("u1")][1] == [("c1.1", 0.0), ("c1.2", 0.0), ("c1.3", 0.0)]
    # Each coupon waits for the expiry sweep at the end of its validity.
    assert after[wallet.expiring][1] == [
        ("c1.3", float(NOW + 1000)),
        ("c1.1", float(NOW + 7 * DAY)),
        ("c1.2", float(NOW + 7 * DAY)),
    ]
    assert after[wallet.seq][1] == "1"
    assert len(after[wallet.events][1]["entries"]) == 1
    assert await last_event(redis_client, wallet.events) == {
        "type": "delivered",
        "v": str(SCHEMA_VERSION),
        "id": "e1",
        "seq": "1",
        "at": str(NOW + 5),
        "activity": "act1",
        "claim_id": "c1",
        "user": "u1",
        "version": "1",
        "answer": answer,
    }
    assert all(expiry == -1 for key, (_, _, expiry) in after.items() if key.startswith(wallet.tag))


async def test_second_deliver_replays_and_writes_nothing(
    runner: ScriptRunner,
    claimer: Claimer,
    make_activity: MakeActivity,
    keyspace: KeySpace,
    redis_client: RedisClient,
) -> None:
    answer = await claimed_answer(claimer, make_activity)
    wallet = keyspace.wallet("u1")
    assert await deliver(runner, wallet, "u1", "act1", answer) == ["ok"]
    before = await snapshot(redis_client)

    assert await deliver(runner, wallet, "u1", "act1", answer, now=NOW + 60) == ["replay"]

    assert await snapshot(redis_client) == before
    assert await redis_client.get(wallet.seq) == "1"
    assert await redis_client.xlen(wallet.events) == 1


async def test_two_claims_fill_one_wallet(
    runner: ScriptRunner,
    claimer: Claimer,
    make_activity: MakeActivity,
    keyspace: KeySpace,
    redis_client: RedisClient,
) -> None:
    first = await claimed_answer(claimer, make_activity, claim_id="c1")
    second = (await claimer(user="u1", claim_id="c2")).answer
    wallet = keyspace.wallet("u1")
    assert await deliver(runner, wallet, "u1", "act1", first) == ["ok"]
    assert await deliver(runner, wallet, "u1", "act1", second) == ["ok"]
    assert await redis_client.hlen(wallet.coupons) == 6
    assert await redis_client.zrange(wallet.user_index("u1"), 0, -1) == [
        "c1.1",
        "c1.2",
        "c1.3",
        "c2.1",
        "c2.2",
        "c2.3",
    ]
    assert await redis_client.get(wallet.seq) == "2"
    assert [fields["claim_id"] for _, fields in await redis_client.xrange(wallet.events)] == ["c1", "c2"]


async def test_claim_service_claims_then_delivers(
    runner: ScriptRunner,
    make_activity: MakeActivity,
    keyspace: KeySpace,
    redis_client: RedisClient,
    settings: Settings,
) -> None:
    """ClaimService's ARGV (tags joined by \\x1f, reg/orders, body hash) as the scripts read them."""
    act = await make_activity(pack=PACK, elig={"tags": ["vip"], "min_orders": 1, "new_within_days": 3})
    service = ClaimService(runner, keyspace, settings.claim.idempotency_ttl_seconds)
    who = UserIdentity("u1", "d1", reg=NOW - DAY, orders=2, tags=("new", "vip"))

    result = await service.claim("act1", who, now=NOW, channel="app", idempotency_key="k-1")

    assert result.outcome is Outcome.OK
    claim_id = json.loads(result.answer)["claim_id"]
    wallet = keyspace.wallet("u1")
    assert await redis_client.zrange(wallet.user_index("u1"), 0, -1) == [f"{claim_id}.{n}" for n in (1, 2, 3)]
    idem = act.idempotency("u1", "k-1")
    assert await redis_client.get(idem) == f"{body_hash('app')}|{result.answer}"
    before = await snapshot(redis_client)

    again = await service.claim("act1", who, now=NOW + 1, channel="app", idempotency_key="k-1")
    assert (again.outcome, again.answer) == (Outcome.REPLAY, result.answer)
    assert await snapshot(redis_client) == before  # claim replayed, deliver replayed

    with pytest.raises(DomainError) as refused:
        await service.claim("act1", who, now=NOW, channel="web", idempotency_key="k-1")
    assert refused.value.outcome is Outcome.IDEMPOTENCY_CONFLICT
    with pytest.raises(DomainError) as refused:
        await service.claim("act1", UserIdentity("u2", "d2", reg=NOW, orders=2, tags=("new",)), now=NOW)
    assert refused.value.outcome is Outcome.NOT_ELIGIBLE
    assert await snapshot(redis_client) == before


async def test_grant_key_reused_for_another_user_is_not_a_replay(
    runner: ScriptRunner,
    make_activity: MakeActivity,
    keyspace: KeySpace,
    redis_client: RedisClient,
    settings: Settings,
) -> None:
    await make_activity(stock=10)
    service = ClaimService(runner, keyspace, settings.claim.idempotency_ttl_seconds)
    first, second = UserIdentity("u7", ""), UserIdentity("u1", "")
    assert keyspace.wallet("u7") != keyspace.wallet("u1")
    granted = await service.claim("act1", first, now=NOW, idempotency_key="g-1", mode="grant", operator="ops")
    coupon_ids = [c["coupon_id"] for c in json.loads(granted.answer)["coupons"]]

    try:
        other: str | None = (
            await service.claim("act1", second, now=NOW, idempotency_key="g-1", mode="grant", operator="ops")
        ).answer
    except DomainError as refused:  # idempotency_conflict is a right answer; so is a new grant for u1
        assert refused.outcome is Outcome.IDEMPOTENCY_CONFLICT
        other = None

    wallet = keyspace.wallet("u1")
    shared = [cid for cid in coupon_ids if await redis_client.hexists(wallet.coupons, cid)]
    assert (other, shared) != (
        granted.answer,
        coupon_ids,
    )  # u1 would be told "u7's grant" and hold its coupons
    assert shared == []  # never the same coupon in two wallets
