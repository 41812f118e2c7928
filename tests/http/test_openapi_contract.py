"""The OpenAPI document lists every route with its body, its answer and its refusals, and real answers match
what it documents (decoded strictly into the documented types)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.testing import AsyncTestClient

from gateway.campaign import Activity, Template
from gateway.http import answers
from tests.helpers import ADMIN, bearer, create_activity

ROUTES = {
    ("/v1/activities/{activity_id}/claim", "post"): {"409", "403", "422", "503", "401", "400", "404"},
    ("/v1/admin/templates", "post"): {"400", "401", "413", "415"},
    ("/v1/admin/templates", "get"): {"400", "401"},
    ("/v1/admin/activities", "post"): {"422", "503"},
    ("/v1/admin/activities", "get"): {"401"},
    ("/v1/admin/activities/{activity_id}", "get"): {"404"},
    ("/v1/admin/activities/{activity_id}", "patch"): {"409"},
    ("/v1/admin/activities/{activity_id}/pause", "post"): {"409"},
    ("/v1/admin/activities/{activity_id}/resume", "post"): {"409"},
    ("/v1/admin/activities/{activity_id}/end", "post"): {"409"},
    ("/v1/admin/activities/{activity_id}/stock", "post"): {"409", "422"},
    ("/v1/admin/activities/{activity_id}/grants", "post"): {"422"},
    ("/v1/admin/activities/{activity_id}/stats", "get"): {"404"},
    ("/v1/admin/blocklist", "get"): {"401"},
    ("/v1/admin/blocklist", "post"): {"400"},
    ("/v1/admin/blocklist/remove", "post"): {"400"},
    ("/healthz", "get"): set(),
    ("/readyz", "get"): {"503"},
}


async def test_every_route_is_documented_with_its_body_and_refusals(client: AsyncTestClient[Any]) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    schemas = document["components"]["schemas"]
    assert {"Error", "ClaimAnswer", "TemplateIn", "ActivityIn", "ActivityRecord"} <= set(schemas)
    for (path, method), statuses in ROUTES.items():
        operation = document["paths"][path][method]
        assert statuses <= set(operation["responses"]), (path, method, sorted(operation["responses"]))
        success = next(code for code in operation["responses"] if code.startswith("2"))
        assert "$ref" in operation["responses"][success]["content"]["application/json"]["schema"]
        for code, response in operation["responses"].items():
            if code >= "400":
                assert response["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/Error"
                }
    claim = document["paths"]["/v1/activities/{activity_id}/claim"]["post"]
    assert claim["requestBody"]["required"] is False
    assert "sold_out" in claim["responses"]["409"]["description"]
    assert document["paths"]["/v1/admin/templates"]["post"]["requestBody"]["required"] is True
    assert set(schemas["Error"]["properties"]["error"]["enum"]) >= {
        "sold_out",
        "invalid_request",
        "overloaded",
    }


async def test_real_answers_match_the_documented_types(client: AsyncTestClient[Any]) -> None:
    activity = await create_activity(client, stock=5, per_user_limit=2)
    aid = activity["id"]
    msgspec.convert(activity, Activity)
    claimed = await client.post(f"/v1/activities/{aid}/claim", headers=bearer("u1"))
    msgspec.json.decode(claimed.content, type=answers.ClaimAnswer)
    checks: list[tuple[str, str, dict[str, Any] | None, Any]] = [
        ("get", "/v1/admin/templates", None, answers.TemplatePage),
        ("get", "/v1/admin/activities", None, answers.ActivityPage),
        ("get", f"/v1/admin/activities/{aid}", None, answers.ActivityRecord),
        ("patch", f"/v1/admin/activities/{aid}", {"name": "renamed"}, answers.ActivityRecord),
        ("post", f"/v1/admin/activities/{aid}/stock", {"delta": 2}, answers.ActivityRecord),
        ("post", f"/v1/admin/activities/{aid}/pause", None, answers.ActivityRecord),
        ("post", f"/v1/admin/activities/{aid}/resume", None, answers.ActivityRecord),
        ("post", f"/v1/admin/activities/{aid}/grants", {"user_ids": ["g1"]}, answers.GrantResults),
        ("get", f"/v1/admin/activities/{aid}/stats", None, answers.ActivityStats),
        ("post", "/v1/admin/blocklist", {"users": ["b1"]}, answers.BlocklistChanged),
        ("get", "/v1/admin/blocklist", None, answers.BlocklistPage),
        ("post", "/v1/admin/activities/" + aid + "/end", None, answers.ActivityRecord),
    ]
    for method, url, body, kind in checks:
        reply = await client.request(method.upper(), url, headers=ADMIN, json=body)
        assert reply.status_code == 200, (url, reply.text)
        msgspec.json.decode(reply.content, type=kind)
    template = (await client.get("/v1/admin/templates", headers=ADMIN)).json()["items"][0]
    msgspec.convert(template, Template)
    msgspec.json.decode((await client.get("/healthz")).content, type=answers.Health)
    msgspec.json.decode((await client.get("/readyz")).content, type=answers.Readiness)
