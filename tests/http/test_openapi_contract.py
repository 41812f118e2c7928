"""The OpenAPI document lists every route with its body, its answer and its refusals, and real answers match
what it documents (decoded strictly into the documented types)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from gateway.catalog.campaign import Activity, Template
from gateway.http import answers
from tests.conftest import SERVICE_KEY
from tests.helpers import ADMIN, bearer, create_activity
from tests.http.support import assert_refusal

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
    msgspec.json.decode((await client.get("/readyz")).content, type=answers.PublicReadiness)


OPS_PATHS = {"/healthz", "/readyz"}  # no credential; the schema routes are left out of the document itself


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, ops in document["paths"].items() for method, op in ops.items()]


def _app_routes(client: AsyncTestClient[Any]) -> set[tuple[str, str]]:
    """Every (path, method) the app routes, the raw claim route by its documented path."""
    found: set[tuple[str, str]] = set()
    for route in client.app.routes:
        if isinstance(route, HTTPRoute) and not route.path.startswith("/schema"):
            found |= {(route.path_format, m.lower()) for m in route.methods if m not in ("HEAD", "OPTIONS")}
    found.add(("/v1/activities/{activity_id}/claim", "post"))
    return found


async def test_every_route_states_its_credentials(client: AsyncTestClient[Any]) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["UserToken"] == {**schemes["UserToken"], "type": "http", "scheme": "bearer"}
    assert schemes["OperatorKey"] == {**schemes["OperatorKey"], "type": "apiKey", "in": "header"}
    assert schemes["OperatorKey"]["name"] == "X-API-Key"
    assert schemes["ServiceKey"] == {**schemes["ServiceKey"], "type": "apiKey", "in": "header"}
    assert schemes["ServiceKey"]["name"] == "X-Service-Key"
    operations = _operations(document)
    assert {(path, method) for path, method, _ in operations} == _app_routes(client)
    for path, method, operation in operations:
        security = operation["security"]
        if path in OPS_PATHS:
            assert security == [], path
            continue
        if path.startswith("/v1/admin/"):
            expected = [{"OperatorKey": []}]
        elif path.startswith(("/v1/checkout/", "/v1/coupons")):
            expected = [{"UserToken": []}, {"ServiceKey": []}]  # a user, or the order service for one
        else:
            expected = [{"UserToken": []}]  # claim and code redeem: users only
        assert security == expected, (path, method, security)
        assert "401" in operation["responses"], (path, method)


async def test_every_route_has_a_one_sentence_description(client: AsyncTestClient[Any]) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    for path, method, operation in _operations(document):
        description = operation.get("description", "")
        assert description.endswith(".") and ". " not in description.rstrip("."), (path, method, description)
        assert 20 <= len(description) <= 200 or path == "/healthz", (path, method, description)


EXAMPLES = {"limit": "5", "status": "available", "user_id": "u1"}
CURSORS = {"/v1/coupons": "c1.1", "/v1/admin/blocklist": "1700000000.user.u1"}  # else an id


def _credentials(operation: dict[str, Any], service: bool) -> dict[str, str]:
    """Headers for the operation's documented credential: a user's token, or the service key when the route
    takes one and ``service`` is asked for, or an operator key; none for a route without one."""
    schemes = {name for requirement in operation["security"] for name in requirement}
    if service and "ServiceKey" in schemes:
        return {"X-Service-Key": SERVICE_KEY}
    if "UserToken" in schemes:
        return bearer("u1")
    return ADMIN if "OperatorKey" in schemes else {}


def _url(path: str) -> str:
    return path.replace("{activity_id}", "nosuch").replace("{order_id}", "o1")


async def test_the_documented_query_parameters_are_the_ones_a_route_takes(
    client: AsyncTestClient[Any],
) -> None:
    """Each documented query parameter is taken (not refused as unknown); any other is refused, naming it."""
    document = (await client.get("/schema/openapi.json")).json()
    documented_names = {
        "/v1/coupons": {"status", "limit", "cursor", "user_id"},
        "/v1/admin/templates": {"limit", "cursor"},
        "/v1/admin/activities": {"limit", "cursor"},
        "/v1/admin/blocklist": {"limit", "cursor"},
        "/v1/checkout/orders/{order_id}": {"user_id"},
    }
    for path, method, operation in _operations(document):
        if path in OPS_PATHS:
            continue
        names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
        assert names == (documented_names.get(path, set()) if method == "get" else set()), (path, method)
        for parameter in (p for p in operation.get("parameters", []) if p["in"] == "query"):
            assert parameter["description"] and parameter["schema"], (path, parameter)
        headers = _credentials(operation, service=False)
        reply = await client.request(method, _url(path), params={"undocumented": "1"}, headers=headers)
        assert_refusal(reply, 400, "invalid_request", field="undocumented")
        for name in names:
            value = EXAMPLES.get(name) or CURSORS.get(path, "id1")
            headers = _credentials(operation, service=name == "user_id")
            reply = await client.request(method, _url(path), params={name: value}, headers=headers)
            assert reply.status_code < 500, (path, name, reply.text)
            if reply.status_code == 400:
                assert "Unknown query parameter" not in reply.json()["message"], (path, name, reply.text)
            # a list: a page; but a wallet cursor must name one of its coupons (none here): not_found
            if "{" not in path:
                expected = 404 if (path, name) == ("/v1/coupons", "cursor") else 200
                assert reply.status_code == expected, (path, name, reply.text)


async def test_a_schema_path_that_serves_nothing_is_the_contracts_404(client: AsyncTestClient[Any]) -> None:
    """Litestar's own answer there is an HTML page; the contract's is JSON."""
    for path in ("/schema/swagger", "/schema/redoc", "/schema/nothing", "/schema/openapi.yaml"):
        assert_refusal(await client.get(path), 404, "not_found")
    assert (await client.get("/schema/openapi.json")).json()["openapi"].startswith("3.1")
