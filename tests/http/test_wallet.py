"""GET /v1/coupons: the caller's wallet (user token) or a named user's (service key), newest first, filtered,
paged; coupons past their validity show as expired; a user token never reads another user's wallet."""

from __future__ import annotations

import json
import time
from typing import Any

from litestar.testing import AsyncTestClient

from gateway.keys import KeySpace
from gateway.scripts.runner import connect
from gateway.settings import Settings
from tests.conftest import SERVICE_KEY
from tests.helpers import bearer, create_activity, create_template
from tests.http.support import assert_refusal, claim_url

SERVICE = {"X-Service-Key": SERVICE_KEY}


async def claim_packs(client: AsyncTestClient[Any], user: str, activities: list[str]) -> list[str]:
    """Claim each activity once for ``user``; the coupon ids, oldest first."""
    ids = []
    for activity_id in activities:
        reply = await client.post(claim_url(activity_id), headers=bearer(user))
        assert reply.status_code == 201, reply.text
        ids += [c["coupon_id"] for c in reply.json()["coupons"]]
    return ids


async def test_the_wallet_lists_newest_first_and_pages(client: AsyncTestClient[Any]) -> None:
    template = await create_template(client)
    activities = [(await create_activity(client, template_id=template["id"]))["id"] for _ in range(3)]
    ids = await claim_packs(client, "alice", activities)
    await claim_packs(client, "bob", activities[:1])

    first = await client.get("/v1/coupons?limit=2", headers=bearer("alice"))
    assert first.status_code == 200, first.text
    page = first.json()
    assert [c["coupon_id"] for c in page["items"]] == ids[::-1][:2]
    assert page["next_cursor"] == ids[1]
    item = page["items"][0]
    assert item == {
        "coupon_id": ids[2], "template_id": template["id"], "activity_id": activities[2], "status": "available",
        "valid_from": item["valid_from"], "valid_until": item["valid_from"] + 7 * 86_400,
    }  # fmt: skip
    second = (
        await client.get(f"/v1/coupons?limit=2&cursor={page['next_cursor']}", headers=bearer("alice"))
    ).json()
    assert second == {"items": [second["items"][0]]} and second["items"][0]["coupon_id"] == ids[0]
    assert (await client.get("/v1/coupons", headers=bearer("carol"))).json() == {"items": []}


async def test_a_coupon_past_its_validity_shows_as_expired_and_filters_so(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    now = int(time.time())
    lapsing = await create_template(client, valid_days=None, valid_from=now - 100, valid_until=now + 2)
    lasting = await create_template(client)
    ids = await claim_packs(
        client,
        "alice",
        [(await create_activity(client, template_id=t["id"]))["id"] for t in (lapsing, lasting)],
    )
    # Let the first lapse: move its record's validity into the past, as the clock would.
    wallet = KeySpace(settings.redis.wallet_buckets, settings.redis.code_buckets).wallet("alice")
    direct = await connect(settings.redis.url)
    try:
        record = json.loads(await direct.hget(wallet.coupons, ids[0]))
        await direct.hset(wallet.coupons, ids[0], json.dumps({**record, "valid_until": now - 1}))
    finally:
        await direct.aclose()

    everything = (await client.get("/v1/coupons", headers=bearer("alice"))).json()["items"]
    assert [(c["coupon_id"], c["status"]) for c in everything] == [(ids[1], "available"), (ids[0], "expired")]
    expired = (await client.get("/v1/coupons?status=expired", headers=bearer("alice"))).json()
    assert [c["coupon_id"] for c in expired["items"]] == [ids[0]]
    available = (await client.get("/v1/coupons?status=available", headers=bearer("alice"))).json()
    assert [c["coupon_id"] for c in available["items"]] == [ids[1]]
    assert (await client.get("/v1/coupons?status=locked", headers=bearer("alice"))).json() == {"items": []}


async def test_a_filtered_page_reads_past_coupons_of_other_statuses(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    """150 coupons, one of them expired and the oldest: a status page finds it beyond the script's first chunk."""
    template = await create_template(client)
    activity = await create_activity(client, template_id=template["id"], stock=200, per_user_limit=200)
    ids = [
        (await client.post(claim_url(activity["id"]), headers=bearer("alice"))).json()["coupons"][0][
            "coupon_id"
        ]
        for _ in range(150)
    ]
    wallet = KeySpace(settings.redis.wallet_buckets, settings.redis.code_buckets).wallet("alice")
    direct = await connect(settings.redis.url)
    try:
        record = json.loads(await direct.hget(wallet.coupons, ids[0]))
        await direct.hset(wallet.coupons, ids[0], json.dumps({**record, "valid_until": 1}))
    finally:
        await direct.aclose()
    found = (await client.get("/v1/coupons?status=expired&limit=1", headers=bearer("alice"))).json()
    assert found == {"items": [found["items"][0]]} and found["items"][0]["coupon_id"] == ids[0]
    pages, cursor = [], ""
    while True:
        reply = (
            await client.get(f"/v1/coupons?status=available&limit=100{cursor}", headers=bearer("alice"))
        ).json()
        pages.append([c["coupon_id"] for c in reply["items"]])
        if "next_cursor" not in reply:
            break
        cursor = f"&cursor={reply['next_cursor']}"
    assert [len(p) for p in pages] == [100, 49]
    # Newest first by id: ids sort by their millisecond, and two made in one millisecond by their random part.
    assert [cid for page in pages for cid in page] == sorted(ids[1:], reverse=True)


async def test_a_service_reads_the_wallet_of_the_user_it_names(client: AsyncTestClient[Any]) -> None:
    activity = await create_activity(client)
    ids = await claim_packs(client, "alice", [activity["id"]])
    reply = await client.get("/v1/coupons?user_id=alice", headers=SERVICE)
    assert reply.status_code == 200, reply.text
    assert [c["coupon_id"] for c in reply.json()["items"]] == ids
    assert_refusal(await client.get("/v1/coupons", headers=SERVICE), 400, "invalid_request", "user_id")
    assert_refusal(
        await client.get("/v1/coupons?user_id=a%20b", headers=SERVICE), 400, "invalid_request", "user_id"
    )
    wrong = {"X-Service-Key": "not-the-key-0123456789"}
    assert_refusal(await client.get("/v1/coupons?user_id=alice", headers=wrong), 401, "unauthorized")


async def test_a_user_token_never_reads_another_users_wallet(client: AsyncTestClient[Any]) -> None:
    activity = await create_activity(client)
    await claim_packs(client, "alice", [activity["id"]])
    reply = await client.get("/v1/coupons?user_id=alice", headers=bearer("mallory"))
    assert_refusal(reply, 400, "invalid_request", "user_id")
    assert_refusal(await client.get("/v1/coupons"), 401, "unauthorized")


async def test_bad_queries_are_refused_naming_the_field(client: AsyncTestClient[Any]) -> None:
    for query, field in [
        ("status=gone", "status"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("cursor=a%20b", "cursor"),
        ("cursor=a/b.1", "cursor"),
        (f"cursor={'c' * 65}", "cursor"),
        ("colour=red", "colour"),
    ]:
        assert_refusal(
            await client.get(f"/v1/coupons?{query}", headers=bearer("alice")), 400, "invalid_request", field
        )


async def test_a_cursor_that_names_none_of_the_users_coupons_is_not_found(
    client: AsyncTestClient[Any],
) -> None:
    """A cursor in the contract's id alphabet that is no coupon of this wallet (never issued, or another user's):
    404 not_found, as for any unknown id, whoever asks; never a 400 naming the shape of the ids the gateway makes."""
    activity = await create_activity(client)
    [alices] = await claim_packs(client, "alice", [activity["id"]])
    [bobs] = await claim_packs(client, "bob", [activity["id"]])
    for cursor in ("nope", "no-such-coupon-x", "x:1", f"{alices[:-1]}9", bobs):
        for headers, named in ((bearer("alice"), ""), (SERVICE, "&user_id=alice")):
            reply = await client.get(f"/v1/coupons?cursor={cursor}{named}", headers=headers)
            assert_refusal(reply, 404, "not_found")
    # the cursor of a page is one of the wallet's coupons: its next page answers (here: empty)
    reply = await client.get(f"/v1/coupons?cursor={alices}", headers=bearer("alice"))
    assert reply.status_code == 200 and reply.json() == {"items": []}, reply.text
