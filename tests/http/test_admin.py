"""Operators' routes: templates and activities (create, list, get), credentials, validation, budgets."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from tests.conftest import OTHER_API_KEY
from tests.helpers import ADMIN, create_activity, create_template
from tests.http.support import assert_refusal

NOW = int(time.time())


def _no_nulls(record: dict[str, Any]) -> None:
    """Optional fields are left out, never null."""
    assert all(value is not None for value in record.values()), record


# --- create


async def test_create_template_answers_the_whole_record(client: AsyncTestClient[Any]) -> None:
    body = {
        "name": "10% off",
        "kind": "discount",
        "percent_off": 10,
        "max_off": 2000,
        "min_spend": 5000,
        "scope": ["shoes", "bags"],
        "valid_from": NOW,
        "valid_until": NOW + 86_400,
    }
    before = int(time.time())
    reply = await client.post("/v1/admin/templates", json=body, headers=ADMIN)
    assert reply.status_code == 201, reply.text
    record = reply.json()
    assert isinstance(record.pop("id"), str)
    assert record.pop("created_by") == "alice"
    assert before <= record.pop("created_at") <= int(time.time())
    assert record == body


async def test_create_template_leaves_absent_fields_out(client: AsyncTestClient[Any]) -> None:
    record = await create_template(client, kind="threshold", amount_off=300, min_spend=3000)
    _no_nulls(record)
    assert "percent_off" not in record and "max_off" not in record and "valid_from" not in record
    assert record["valid_days"] == 7


async def test_the_operator_is_recorded(client: AsyncTestClient[Any]) -> None:
    body = {"name": "bob's", "kind": "cash", "amount_off": 100, "valid_days": 1}
    reply = await client.post("/v1/admin/templates", json=body, headers={"X-API-Key": OTHER_API_KEY})
    assert reply.status_code == 201
    assert reply.json()["created_by"] == "bob"


async def test_create_activity_answers_the_whole_record(client: AsyncTestClient[Any]) -> None:
    cash = await create_template(client, amount_off=500)
    capped = await create_template(client, kind="discount", amount_off=None, percent_off=20, max_off=1000)
    body = {
        "name": "drop",
        "pack": [{"template_id": cash["id"], "count": 2}, {"template_id": capped["id"], "count": 1}],
        "starts_at": NOW,
        "ends_at": NOW + 3600,
        "stock": 4,
        "per_user_limit": 1,
        "per_device_limit": 2,
        "eligibility": {"new_within_days": 30, "tags": ["vip"]},
        "budget": 8000,
    }
    reply = await client.post("/v1/admin/activities", json=body, headers=ADMIN)
    assert reply.status_code == 201, reply.text
    record = reply.json()
    _no_nulls(record)
    assert isinstance(record.pop("id"), str)
    assert record.pop("created_by") == "alice"
    assert isinstance(record.pop("created_at"), int)
    assert record.pop("status") == "active"
    assert record.pop("face_per_pack") == 2 * 500 + 1000
    assert record == body


async def test_get_activity_has_status_and_stock_left(client: AsyncTestClient[Any]) -> None:
    created = await create_activity(client, stock=3)
    reply = await client.get(f"/v1/admin/activities/{created['id']}", headers=ADMIN)
    assert reply.status_code == 200, reply.text
    record = reply.json()
    assert record["status"] == "active"
    assert record["stock_left"] == 3
    _no_nulls(record)
    assert {k: v for k, v in record.items() if k != "stock_left"} == created


@pytest.mark.parametrize("activity_id", ["0123456789abcdef0123456789ab", "x}y", "a" * 65])
async def test_get_unknown_activity_is_404(client: AsyncTestClient[Any], activity_id: str) -> None:
    reply = await client.get(f"/v1/admin/activities/{activity_id}", headers=ADMIN)
    assert_refusal(reply, 404, "not_found")


# --- lists


async def _made(client: AsyncTestClient[Any], kind: str, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        if kind == "templates":
            ids.append((await create_template(client))["id"])
        else:
            ids.append((await create_activity(client))["id"])
        await asyncio.sleep(0.002)  # ids sort by millisecond
    return ids


@pytest.mark.parametrize("kind", ["templates", "activities"])
async def test_list_pages_newest_first(client: AsyncTestClient[Any], kind: str) -> None:
    made = await _made(client, kind, 3)
    if kind == "activities":  # each helper activity made its own template too
        assert len((await client.get("/v1/admin/templates", headers=ADMIN)).json()["items"]) == 3
    newest_first = list(reversed(made))
    url = f"/v1/admin/{kind}"

    first = await client.get(url, params={"limit": 2}, headers=ADMIN)
    assert first.status_code == 200, first.text
    page = first.json()
    assert [item["id"] for item in page["items"]] == newest_first[:2]
    assert set(page) == {"items", "next_cursor"}

    second = await client.get(url, params={"limit": 2, "cursor": page["next_cursor"]}, headers=ADMIN)
    assert second.status_code == 200
    last = second.json()
    assert [item["id"] for item in last["items"]] == newest_first[2:]
    assert set(last) == {"items"}  # the last page leaves next_cursor out

    whole = (await client.get(url, headers=ADMIN)).json()
    assert [item["id"] for item in whole["items"]] == newest_first
    assert "next_cursor" not in whole

    exact = (await client.get(url, params={"limit": 3}, headers=ADMIN)).json()
    assert len(exact["items"]) == 3 and "next_cursor" not in exact


@pytest.mark.parametrize("kind", ["templates", "activities"])
async def test_empty_list(client: AsyncTestClient[Any], kind: str) -> None:
    reply = await client.get(f"/v1/admin/{kind}", headers=ADMIN)
    assert reply.status_code == 200
    assert reply.json() == {"items": []}


async def test_list_items_are_whole_records(client: AsyncTestClient[Any]) -> None:
    template = await create_template(client)
    listed = (await client.get("/v1/admin/templates", headers=ADMIN)).json()["items"]
    assert listed == [template]


@pytest.mark.parametrize("kind", ["templates", "activities"])
@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "x}y"}, "cursor"),
        ({"offset": "5"}, "offset"),
        ({"status": "active"}, "status"),
    ],
)
async def test_bad_list_query_is_400(
    client: AsyncTestClient[Any], kind: str, params: dict[str, str], field: str
) -> None:
    reply = await client.get(f"/v1/admin/{kind}", params=params, headers=ADMIN)
    assert_refusal(reply, 400, "invalid_request", field)


async def test_get_activity_unknown_query_parameter_is_400(client: AsyncTestClient[Any]) -> None:
    created = await create_activity(client)
    reply = await client.get(f"/v1/admin/activities/{created['id']}", params={"bogus": "1"}, headers=ADMIN)
    assert_refusal(reply, 400, "invalid_request", "bogus")


@pytest.mark.parametrize("limit", ["1", "100"])
async def test_list_limit_bounds_are_accepted(client: AsyncTestClient[Any], limit: str) -> None:
    reply = await client.get("/v1/admin/templates", params={"limit": limit}, headers=ADMIN)
    assert reply.status_code == 200, reply.text


# --- credentials

ADMIN_CALLS = [
    ("POST", "/v1/admin/templates"),
    ("GET", "/v1/admin/templates"),
    ("POST", "/v1/admin/activities"),
    ("GET", "/v1/admin/activities"),
    ("GET", "/v1/admin/activities/0123456789abcdef0123456789ab"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": "wrong-key-0123456789abcdef"},
        {"X-API-Key": ""},
        {"Authorization": "Bearer alice-key-0123456789abcdef"},
    ],
    ids=["missing", "wrong", "empty", "as-bearer"],
)
async def test_admin_routes_need_a_valid_key(
    client: AsyncTestClient[Any], method: str, path: str, headers: dict[str, str]
) -> None:
    # an invalid body too: credentials are checked before the request's shape
    kwargs: dict[str, Any] = {"content": b"{bad", "headers": {**headers, "Content-Type": "application/json"}}
    if method == "GET":
        kwargs = {"headers": headers, "params": {"bogus": "1"}}
    reply = await client.request(method, path, **kwargs)
    assert_refusal(reply, 401, "unauthorized")


# --- validation

TEMPLATE = {"name": "t", "kind": "cash", "amount_off": 500, "valid_days": 7}


def _template(**changes: Any) -> dict[str, Any]:
    body = {**TEMPLATE, **changes}
    return {k: v for k, v in body.items() if v is not None}


TEMPLATE_ERRORS = [
    ("missing-name", _template(name=None), "name"),
    ("empty-name", _template(name=""), "name"),
    ("bad-kind", _template(kind="voucher"), "kind"),
    ("amount-as-string", _template(amount_off="500"), "amount_off"),
    ("amount-as-float", _template(amount_off=5.5), "amount_off"),
    ("negative-amount", _template(amount_off=-1), "amount_off"),
    ("zero-amount", _template(amount_off=0), "amount_off"),
    ("amount-over-1e12", _template(amount_off=10**12 + 1), "amount_off"),
    ("percent-0", _template(kind="discount", amount_off=None, percent_off=0), "percent_off"),
    ("percent-101", _template(kind="discount", amount_off=None, percent_off=101), "percent_off"),
    ("discount-without-percent", _template(kind="discount", amount_off=None), "percent_off"),
    ("discount-with-amount", _template(kind="discount", percent_off=10), "amount_off"),
    ("cash-with-percent", _template(percent_off=10), "percent_off"),
    ("cash-with-max-off", _template(max_off=10), "max_off"),
    ("cash-with-min-spend", _template(min_spend=1000), "min_spend"),
    ("threshold-without-min-spend", _template(kind="threshold"), "min_spend"),
    ("threshold-with-zero-min-spend", _template(kind="threshold", min_spend=0), "min_spend"),
    ("negative-min-spend", _template(kind="threshold", min_spend=-5), "min_spend"),
    ("valid-days-and-window", _template(valid_from=NOW, valid_until=NOW + 60), "valid_days"),
    ("neither-days-nor-window", _template(valid_days=None), "valid_days"),
    ("window-without-end", _template(valid_days=None, valid_from=NOW), "valid_until"),
    ("window-without-start", _template(valid_days=None, valid_until=NOW), "valid_from"),
    ("window-backwards", _template(valid_days=None, valid_from=NOW, valid_until=NOW), "valid_until"),
    ("valid-days-0", _template(valid_days=0), "valid_days"),
    ("scope-not-a-list", _template(scope="shoes"), "scope"),
    ("scope-with-empty-label", _template(scope=[""]), "scope[0]"),
]


@pytest.mark.parametrize(
    ("body", "field"), [case[1:] for case in TEMPLATE_ERRORS], ids=[case[0] for case in TEMPLATE_ERRORS]
)
async def test_template_validation(client: AsyncTestClient[Any], body: dict[str, Any], field: str) -> None:
    reply = await client.post("/v1/admin/templates", json=body, headers=ADMIN)
    assert_refusal(reply, 400, "invalid_request", field)
    assert (await client.get("/v1/admin/templates", headers=ADMIN)).json() == {"items": []}


@pytest.mark.parametrize("raw", [b"{bad", b"[]", b"null", b""])
async def test_template_body_not_an_object(client: AsyncTestClient[Any], raw: bytes) -> None:
    reply = await client.post(
        "/v1/admin/templates", content=raw, headers={**ADMIN, "Content-Type": "application/json"}
    )
    assert_refusal(reply, 400, "invalid_request")


async def test_template_unknown_field(client: AsyncTestClient[Any]) -> None:
    reply = await client.post("/v1/admin/templates", json=_template(bogus=1), headers=ADMIN)
    body = assert_refusal(reply, 400, "invalid_request")
    assert "bogus" in body["message"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/admin/templates", _template(bogus=1), "bogus"),
        ("/v1/admin/activities", {"eligibility": {"vip": True}}, "eligibility.vip"),
    ],
    ids=["top-level", "nested"],
)
async def test_unknown_field_is_named_in_field(
    client: AsyncTestClient[Any], path: str, body: dict[str, Any], field: str
) -> None:
    if path.endswith("activities"):
        template = await create_template(client)
        body = {
            "name": "a",
            "pack": [{"template_id": template["id"], "count": 1}],
            "starts_at": NOW,
            "ends_at": NOW + 60,
            "stock": 1,
            "per_user_limit": 1,
            **body,
        }
    reply = await client.post(path, json=body, headers=ADMIN)
    assert_refusal(reply, 400, "invalid_request", field)


async def test_admin_415_and_413(client: AsyncTestClient[Any]) -> None:
    reply = await client.post(
        "/v1/admin/templates", content=b"name=x", headers={**ADMIN, "Content-Type": "text/plain"}
    )
    assert_refusal(reply, 415, "invalid_request")
    # admin routes take up to 1 MiB: 20 KiB is fine (refused for its content, not its size) ...
    big = b'{"name": "' + b"n" * 20_000 + b'"}'
    reply = await client.post(
        "/v1/admin/templates", content=big, headers={**ADMIN, "Content-Type": "application/json"}
    )
    assert_refusal(reply, 400, "invalid_request")
    # ... over 1 MiB is not
    huge = b'{"name": "' + b"n" * (1024 * 1024) + b'"}'
    reply = await client.post(
        "/v1/admin/templates", content=huge, headers={**ADMIN, "Content-Type": "application/json"}
    )
    assert_refusal(reply, 413, "invalid_request")


ACTIVITY_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown-field", {"colour": "red"}, ""),
    ("stock-as-string", {"stock": "5"}, "stock"),
    ("negative-stock", {"stock": -1}, "stock"),
    ("per-user-limit-0", {"per_user_limit": 0}, "per_user_limit"),
    ("per-device-limit-0", {"per_device_limit": 0}, "per_device_limit"),
    ("missing-per-user-limit", {"per_user_limit": None}, "per_user_limit"),
    ("ends-before-start", {"starts_at": NOW, "ends_at": NOW - 1}, "ends_at"),
    ("ends-at-start", {"starts_at": NOW, "ends_at": NOW}, "ends_at"),
    ("negative-start", {"starts_at": -1}, "starts_at"),
    ("pack-empty", {"pack": []}, "pack"),
    (
        "pack-missing-template",
        {"pack": [{"template_id": "0123456789abcdef0123456789ab", "count": 1}]},
        "pack[0].template_id",
    ),
    ("pack-count-0", {"pack": "COUNT0"}, "pack[0].count"),
    ("pack-duplicate", {"pack": "DUP"}, "pack[1].template_id"),
    ("eligibility-bad-user", {"eligibility": {"users": ["a b"]}}, "eligibility.users[0]"),
    ("eligibility-empty-tags", {"eligibility": {"tags": []}}, "eligibility.tags"),
    ("negative-budget", {"budget": -1}, "budget"),
]


@pytest.mark.parametrize(
    ("changes", "field"), [case[1:] for case in ACTIVITY_ERRORS], ids=[case[0] for case in ACTIVITY_ERRORS]
)
async def test_activity_validation(client: AsyncTestClient[Any], changes: dict[str, Any], field: str) -> None:
    template = await create_template(client)
    pack = [{"template_id": template["id"], "count": 1}]
    if changes.get("pack") == "COUNT0":
        changes = {"pack": [{"template_id": template["id"], "count": 0}]}
    elif changes.get("pack") == "DUP":
        changes = {"pack": [*pack, *pack]}
    body = {
        "name": "a",
        "pack": pack,
        "starts_at": NOW,
        "ends_at": NOW + 3600,
        "stock": 5,
        "per_user_limit": 1,
        **changes,
    }
    body = {k: v for k, v in body.items() if v is not None}
    reply = await client.post("/v1/admin/activities", json=body, headers=ADMIN)
    refusal = assert_refusal(reply, 400, "invalid_request", field or None)
    if not field:
        assert "colour" in refusal["message"]
    assert (await client.get("/v1/admin/activities", headers=ADMIN)).json() == {"items": []}


# --- budget


async def _activity_body(
    client: AsyncTestClient[Any], template: dict[str, Any], **fields: Any
) -> dict[str, Any]:
    return {
        "name": "a",
        "pack": [{"template_id": template["id"], "count": 2}],
        "starts_at": NOW,
        "ends_at": NOW + 3600,
        "stock": 10,
        "per_user_limit": 1,
        **fields,
    }


async def test_over_budget(client: AsyncTestClient[Any]) -> None:
    template = await create_template(client, amount_off=500)  # a pack is worth 1000, x10 stock = 10000
    reply = await client.post(
        "/v1/admin/activities", json=await _activity_body(client, template, budget=9999), headers=ADMIN
    )
    assert_refusal(reply, 422, "over_budget")
    assert (await client.get("/v1/admin/activities", headers=ADMIN)).json() == {"items": []}
    reply = await client.post(
        "/v1/admin/activities", json=await _activity_body(client, template, budget=10_000), headers=ADMIN
    )
    assert reply.status_code == 201, reply.text


async def test_budgeted_activity_cannot_hold_an_uncapped_discount(client: AsyncTestClient[Any]) -> None:
    uncapped = await create_template(client, kind="discount", amount_off=None, percent_off=10)
    reply = await client.post(
        "/v1/admin/activities", json=await _activity_body(client, uncapped, budget=10**12), headers=ADMIN
    )
    assert_refusal(reply, 422, "over_budget")
    # without a budget it may
    reply = await client.post(
        "/v1/admin/activities", json=await _activity_body(client, uncapped), headers=ADMIN
    )
    assert reply.status_code == 201, reply.text


async def test_a_capped_discount_counts_at_its_cap(client: AsyncTestClient[Any]) -> None:
    capped = await create_template(client, kind="discount", amount_off=None, percent_off=50, max_off=300)
    over = await client.post(
        "/v1/admin/activities", json=await _activity_body(client, capped, budget=5999), headers=ADMIN
    )
    assert_refusal(over, 422, "over_budget")
    ok = await client.post(
        "/v1/admin/activities", json=await _activity_body(client, capped, budget=6000), headers=ADMIN
    )
    assert ok.status_code == 201, ok.text
    assert ok.json()["face_per_pack"] == 600


async def test_shape_comes_before_budget(client: AsyncTestClient[Any]) -> None:
    template = await create_template(client, amount_off=500)
    body = await _activity_body(client, template, budget=1, stock=-1)
    assert_refusal(
        await client.post("/v1/admin/activities", json=body, headers=ADMIN), 400, "invalid_request", "stock"
    )
