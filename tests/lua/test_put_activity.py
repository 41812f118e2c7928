"""put_activity against real Redis: the config, the allow-list, the consumer group, seq and one event."""

from __future__ import annotations

import json

from gateway.catalog.admin import AdminService
from gateway.catalog.campaign import Activity, ActivityIn, Eligibility, PackItem, Template
from gateway.events import SCHEMA_VERSION
from gateway.keys import KeySpace
from gateway.scripts.runner import RedisClient, ScriptRunner
from tests.lua.support import NOW, activity_config, changed, put_activity, snapshot


async def test_creates_config_allow_group_seq_and_event(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    keys = KeySpace.activity("act1")
    config = activity_config(stock=7, per_user_limit=2, per_device_limit=3, elig={"users": True})
    before = await snapshot(redis_client)

    reply = await put_activity(runner, "act1", config, allow=["u1", "u2"], event_id="ev-1", operator="alice")

    assert reply == ["ok", 1]
    after = await snapshot(redis_client)
    assert changed(before, after) == {keys.config, keys.allow_list, keys.seq, keys.events}
    expected = {name: str(value) for name, value in config.items() if name != "stock"}
    assert await redis_client.hgetall(keys.config) == {**expected, "stock_left": "7", "taken": "0"}
    assert await redis_client.smembers(keys.allow_list) == {"u1", "u2"}
    assert await redis_client.get(keys.seq) == "1"
    groups = await redis_client.xinfo_groups(keys.events)
    assert [(g["name"], g["consumers"], g["pending"], g["last-delivered-id"]) for g in groups] == [
        (keys.events, 0, 0, "0-0")
    ]
    entries = await redis_client.xrange(keys.events)
    assert len(entries) == 1
    assert entries[0][1] == {
        "type": "activity_created",
        "v": str(SCHEMA_VERSION),
        "id": "ev-1",
        "seq": "1",
        "at": str(NOW),
        "activity": "act1",
        "by": "alice",
        "before": "",
        "after": json.dumps(config),
        "allow": json.dumps(["u1", "u2"]),
    }
    for key in after:  # nothing the script made expires
        assert after[key][2] == -1


async def test_no_allow_list_creates_no_set(runner: ScriptRunner, redis_client: RedisClient) -> None:
    keys = KeySpace.activity("act1")
    assert (await put_activity(runner, "act1", activity_config()))[0] == "ok"
    assert await redis_client.exists(keys.allow_list) == 0
    assert (await redis_client.xrange(keys.events))[0][1]["allow"] == "[]"


async def test_long_allow_list_is_added_in_chunks(runner: ScriptRunner, redis_client: RedisClient) -> None:
    users = [f"u{n}" for n in range(2_345)]
    assert (await put_activity(runner, "act1", activity_config(), allow=users))[0] == "ok"
    assert await redis_client.smembers(KeySpace.activity("act1").allow_list) == set(users)


async def test_second_call_replays_and_changes_nothing(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    assert (await put_activity(runner, "act1", activity_config(stock=5), allow=["u1"]))[0] == "ok"
    before = await snapshot(redis_client)

    other = activity_config(stock=99, status="paused")
    assert await put_activity(runner, "act1", other, allow=["u9"], now=NOW + 5) == ["replay"]
    assert await put_activity(runner, "act1", activity_config(stock=5), allow=["u1"]) == ["replay"]

    assert await snapshot(redis_client) == before


async def test_existing_group_is_kept(runner: ScriptRunner, redis_client: RedisClient) -> None:
    """A stream and group left from before (config lost, e.g. partial restore): BUSYGROUP is no error."""
    keys = KeySpace.activity("act1")
    await redis_client.xgroup_create(keys.events, keys.events, id="0", mkstream=True)
    await redis_client.set(keys.seq, 41)

    assert await put_activity(runner, "act1", activity_config()) == ["ok", 42]
    assert [g["name"] for g in await redis_client.xinfo_groups(keys.events)] == [keys.events]
    assert await redis_client.xlen(keys.events) == 1


async def test_admin_mirror_builds_what_claim_reads(
    runner: ScriptRunner, redis_client: RedisClient, db: object
) -> None:
    """AdminService.mirror_activity (hot_config) makes a config of the shape the claim script reads."""
    days = Template(
        name="5 off", kind="cash", amount_off=500, valid_days=7, id="t1", created_by="a", created_at=1
    )
    window = Template(
        name="10%",
        kind="discount",
        percent_off=10,
        max_off=300,
        valid_from=NOW,
        valid_until=NOW + 100,
        id="t2",
        created_by="a",
        created_at=1,
    )
    activity = Activity(
        name="sale",
        pack=[PackItem("t1", 2), PackItem("t2", 1)],
        starts_at=NOW - 10,
        ends_at=NOW + 3600,
        stock=3,
        per_user_limit=1,
        eligibility=Eligibility(min_orders=1, users=["u1"]),
        id="act9",
        status="active",
        face_per_pack=1300,
        created_by="alice",
        created_at=NOW,
    )
    admin = AdminService(db, runner, KeySpace(8, 4))  # type: ignore[arg-type]

    assert await admin.mirror_activity(activity, {"t1": days, "t2": window}, "alice", NOW) == "ok"
    assert await admin.mirror_activity(activity, {"t1": days, "t2": window}, "alice", NOW) == "replay"

    keys = KeySpace.activity("act9")
    config = await redis_client.hgetall(keys.config)
    assert config == {
        "status": "active",
        "starts_at": str(NOW - 10),
        "ends_at": str(NOW + 3600),
        "stock_left": "3",
        "taken": "0",
        "per_user_limit": "1",
        "per_device_limit": "0",
        "elig": '{"min_orders":1,"users":true}',
        "pack": '[{"template_id":"t1","count":2,"valid_days":7},'
        f'{{"template_id":"t2","count":1,"valid_from":{NOW},"valid_until":{NOW + 100}}}]',
        "face_per_pack": "1300",
        "name": activity.name,
        "budget": "",
    }
    assert await redis_client.smembers(keys.allow_list) == {"u1"}
    assert await redis_client.get(keys.seq) == "1"


async def test_large_numbers_are_stored_as_given(runner: ScriptRunner, redis_client: RedisClient) -> None:
    """The header: the config's other fields are stored as given. face_per_pack reaches 10**14 and more
    within the admin API's own limits (amount_off <= 10**12, count <= 100, 20 pack items)."""
    big = Template(
        name="big", kind="cash", amount_off=10**12, valid_days=7, id="t1", created_by="a", created_at=1
    )
    body = ActivityIn(
        name="sale",
        pack=[PackItem("t1", 100)],
        starts_at=NOW - 10,
        ends_at=NOW + 3600,
        stock=1,
        per_user_limit=1,
    )
    face = body.check({"t1": big})
    assert face == 10**14  # accepted by validation
    config = activity_config(face_per_pack=face)

    assert (await put_activity(runner, "act1", config))[0] == "ok"

    stored = await redis_client.hget(KeySpace.activity("act1").config, "face_per_pack")
    assert stored == str(10**14)  # actually '1e+14'; int(stored) would raise ValueError
