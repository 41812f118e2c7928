"""Operators' routes (``X-API-Key``): templates and activities."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath

from gateway import store
from gateway.campaign import ActivityIn, TemplateIn
from gateway.http import auth, bodies
from gateway.http.errors import JSON
from gateway.outcomes import DomainError, Outcome

ADMIN_BODY_LIMIT = 1024 * 1024
_LIST_QUERY = frozenset({"limit", "cursor"})


def _json(value: object, status: int = 200) -> Response[bytes]:
    return Response(msgspec.json.encode(value), status_code=status, media_type=JSON)


def _page(items: list[Any], limit: int) -> Response[bytes]:
    page: dict[str, object] = {"items": items[:limit]}
    if len(items) > limit:
        page["next_cursor"] = items[limit - 1].id
    return _json(page)


@post("/v1/admin/templates", status_code=201)
async def create_template(request: Request[Any, Any, Any]) -> Response[bytes]:
    operator = auth.operator(request)
    body = await bodies.body(request, TemplateIn)
    template = await auth.services(request).admin.create_template(body, operator, int(time.time()))
    return _json(template, 201)


@get("/v1/admin/templates")
async def list_templates(request: Request[Any, Any, Any]) -> Response[bytes]:
    auth.operator(request)
    bodies.only_query(request, _LIST_QUERY)
    limit = bodies.list_limit(request)
    items = await store.list_templates(
        auth.services(request).pool, before=bodies.cursor(request), limit=limit + 1
    )
    return _page(items, limit)


@post("/v1/admin/activities", status_code=201)
async def create_activity(request: Request[Any, Any, Any]) -> Response[bytes]:
    operator = auth.operator(request)
    body = await bodies.body(request, ActivityIn)
    activity = await auth.services(request).admin.create_activity(body, operator, int(time.time()))
    return _json(activity, 201)


@get("/v1/admin/activities")
async def list_activities(request: Request[Any, Any, Any]) -> Response[bytes]:
    auth.operator(request)
    bodies.only_query(request, _LIST_QUERY)
    limit = bodies.list_limit(request)
    items = await store.list_activities(
        auth.services(request).pool, before=bodies.cursor(request), limit=limit + 1
    )
    return _page(items, limit)


@get("/v1/admin/activities/{activity_id:str}")
async def get_activity(request: Request[Any, Any, Any], activity_id: FromPath[str]) -> Response[bytes]:
    auth.operator(request)
    bodies.only_query(request, frozenset())
    services = auth.services(request)
    activity = (
        await store.get_activity(services.pool, activity_id)
        if bodies.PATH_ID.fullmatch(activity_id)
        else None
    )
    if activity is None:
        raise DomainError(Outcome.NOT_FOUND, "No such activity.")
    status, stock_left = await services.admin.live_state(activity, int(time.time()))
    record = msgspec.to_builtins(activity)
    record["status"] = status
    record["stock_left"] = stock_left
    return _json(record)


ROUTES = [create_template, list_templates, create_activity, list_activities, get_activity]
