"""Operators' routes (``X-API-Key``): templates and activities."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from litestar import Request, Response, get, patch, post
from litestar.params import FromPath

from gateway import clock
from gateway.catalog import store
from gateway.catalog.campaign import Activity, ActivityIn, ActivityPatch, StockChange, Template, TemplateIn
from gateway.claim.grants import GrantBody
from gateway.http import auth, bodies
from gateway.http.answers import (
    ActivityPage,
    ActivityRecord,
    GrantResults,
    TemplatePage,
)
from gateway.http.errors import JSON
from gateway.http.openapi import OPERATOR, documented
from gateway.outcomes import DomainError, Outcome
from gateway.scripts.calls.catalog import StatusAction

ADMIN_BODY_LIMIT = 1024 * 1024
LIST_QUERY = (bodies.LIMIT, bodies.cursor_query(bodies.PATH_ID))


def as_json(value: object, status: int = 200) -> Response[bytes]:
    return Response(msgspec.json.encode(value), status_code=status, media_type=JSON)


async def _page(
    request: Request[Any, Any, Any],
    fetch: Callable[..., Awaitable[list[Any]]],
    show: Callable[[Any], Awaitable[object]] | None = None,
) -> Response[bytes]:
    """A page newest first: ``{items, next_cursor}``, the cursor left out on the last page."""
    auth.operator(request)
    bodies.only_query(request)
    limit = bodies.list_limit(request)
    found = await fetch(auth.services(request).pool, before=bodies.cursor(request), limit=limit + 1)
    items = found[:limit]
    page: dict[str, object] = {"items": [await show(i) for i in items] if show else items}
    if len(found) > limit:
        page["next_cursor"] = items[-1].id
    return as_json(page)


@post(
    "/v1/admin/templates",
    status_code=201,
    opt=documented(
        callers=OPERATOR,
        description="Create a template (what a coupon is worth, where it applies, how long it is valid).",
        body=TemplateIn,
        answer=Template,
    ),
)
async def create_template(request: Request[Any, Any, Any]) -> Response[bytes]:
    operator = auth.operator(request)
    bodies.only_query(request)
    body = await bodies.body(request, TemplateIn)
    template = await auth.services(request).admin.create_template(body, operator, int(clock.now()))
    return as_json(template, 201)


@get(
    "/v1/admin/templates",
    opt=documented(
        callers=OPERATOR,
        description="List the templates, newest first, a page at a time.",
        query=LIST_QUERY,
        answer=TemplatePage,
    ),
)
async def list_templates(request: Request[Any, Any, Any]) -> Response[bytes]:
    return await _page(request, store.list_templates)


@post(
    "/v1/admin/activities",
    status_code=201,
    opt=documented(
        callers=OPERATOR,
        description="Create an activity: a pack of templates handed out from a stock within a window, "
        "under per-user and per-device limits, an audience and a budget.",
        body=ActivityIn,
        answer=Activity,
        refusals=(Outcome.OVER_BUDGET,),
        scripts=True,
    ),
)
async def create_activity(request: Request[Any, Any, Any]) -> Response[bytes]:
    operator = auth.operator(request)
    bodies.only_query(request)
    body = await bodies.body(request, ActivityIn)
    activity = await auth.services(request).admin.create_activity(body, operator, int(clock.now()))
    return as_json(activity, 201)


@get(
    "/v1/admin/activities",
    opt=documented(
        callers=OPERATOR,
        description="List the activities, newest first, a page at a time, each with its live status and stock.",
        query=LIST_QUERY,
        answer=ActivityPage,
        scripts=True,
    ),
)
async def list_activities(request: Request[Any, Any, Any]) -> Response[bytes]:
    async def live(activity: Activity) -> object:
        return await _live_record(request, activity)

    return await _page(request, store.list_activities, live)


async def activity_of_path(request: Request[Any, Any, Any], activity_id: str) -> Activity:
    services = auth.services(request)
    activity = (
        await store.get_activity(services.pool, activity_id)
        if bodies.PATH_ID.fullmatch(activity_id)
        else None
    )
    if activity is None:
        raise DomainError(Outcome.NOT_FOUND, "No such activity.")
    return activity


async def _mirrored(request: Request[Any, Any, Any], activity_id: str) -> Activity:
    """The activity, its Redis mirror repaired first if a crash or an outage left it missing."""
    activity = await activity_of_path(request, activity_id)
    await auth.services(request).admin.live_state(activity, int(clock.now()))
    return activity


HOT_FIELDS = ("name", "starts_at", "ends_at", "per_user_limit", "per_device_limit")


def live_status(hot: dict[str, str], now: int) -> str:
    """The status an operator sees: Redis's, except that an activity whose ``ends_at`` has passed reads
    ``ended`` (product.md), whatever Redis holds (no timer ends it there: the claim script judges the window)."""
    return "ended" if now >= int(hot["ends_at"]) else hot["status"]


def stock_made_available(hot: dict[str, str]) -> int:
    """The packs made available in all: created, plus restocks, minus removals. Claims and grants move packs
    from ``stock_left`` to ``taken``, code batches to ``reserved`` (and a voided batch back), restocks change
    ``stock_left`` alone: so the three together are exactly that figure."""
    return sum(int(hot.get(name) or 0) for name in ("stock_left", "taken", "reserved"))


async def _live_record(request: Request[Any, Any, Any], activity: Activity) -> dict[str, Any]:
    """The definition from Postgres overlaid with what Redis holds now (status, window, limits, stock)."""
    now = int(clock.now())
    hot = await auth.services(request).admin.live_state(activity, now)
    record: dict[str, Any] = msgspec.to_builtins(activity)
    record["status"] = live_status(hot, now)
    record["stock"] = stock_made_available(hot)
    record["stock_left"] = int(hot["stock_left"])
    for name in HOT_FIELDS:
        if name in hot:
            record[name] = hot[name] if name == "name" else int(hot[name])
    if not record.get("per_device_limit"):
        record.pop("per_device_limit", None)
    return record


@get(
    "/v1/admin/activities/{activity_id:str}",
    opt=documented(
        callers=OPERATOR,
        description="One activity, with its live status and stock left.",
        answer=ActivityRecord,
        scripts=True,
    ),
)
async def get_activity(request: Request[Any, Any, Any], activity_id: FromPath[str]) -> Response[bytes]:
    auth.operator(request)
    bodies.only_query(request)
    return as_json(await _live_record(request, await activity_of_path(request, activity_id)))


@patch(
    "/v1/admin/activities/{activity_id:str}",
    opt=documented(
        callers=OPERATOR,
        description="Change an activity's name, or its window or limits before it starts.",
        body=ActivityPatch,
        answer=ActivityRecord,
        refusals=(Outcome.STATE_CONFLICT,),
        scripts=True,
    ),
)
async def patch_activity(request: Request[Any, Any, Any], activity_id: FromPath[str]) -> Response[bytes]:
    """Change the name, or the window or limits before the activity starts (``state_conflict`` after)."""
    operator = auth.operator(request)
    bodies.only_query(request)
    changes = (await bodies.body(request, ActivityPatch)).changes()  # the request's shape before the domain
    activity = await _mirrored(request, activity_id)
    await auth.services(request).admin.patch(activity.id, changes, operator, int(clock.now()))
    return as_json(await _live_record(request, activity))


async def _set_status(
    request: Request[Any, Any, Any], activity_id: str, action: StatusAction
) -> Response[bytes]:
    operator = auth.operator(request)
    bodies.only_query(request)
    activity = await _mirrored(request, activity_id)
    await auth.services(request).admin.set_status(activity.id, action, operator, int(clock.now()))
    return as_json(await _live_record(request, activity))


@post(
    "/v1/admin/activities/{activity_id:str}/pause",
    status_code=200,
    opt=documented(
        callers=OPERATOR,
        description="Pause an activity: its claims are refused (paused) until it is resumed.",
        answer=ActivityRecord,
        refusals=(Outcome.STATE_CONFLICT,),
        scripts=True,
    ),
)
async def pause_activity(request: Request[Any, Any, Any], activity_id: FromPath[str]) -> Response[bytes]:
    return await _set_status(request, activity_id, "pause")


@post(
    "/v1/admin/activities/{activity_id:str}/resume",
    status_code=200,
    opt=documented(
        callers=OPERATOR,
        description="Resume a paused activity.",
        answer=ActivityRecord,
        refusals=(Outcome.STATE_CONFLICT,),
        scripts=True,
    ),
)
async def resume_activity(request: Request[Any, Any, Any], activity_id: FromPath[str]) -> Response[bytes]:
    return await _set_status(request, activity_id, "resume")


@post(
    "/v1/admin/activities/{activity_id:str}/end",
    status_code=200,
    opt=documented(
        callers=OPERATOR,
        description="End an activity for good: its claims are refused (ended) from now on.",
        answer=ActivityRecord,
        refusals=(Outcome.STATE_CONFLICT,),
        scripts=True,
    ),
)
async def end_activity(request: Request[Any, Any, Any], activity_id: FromPath[str]) -> Response[bytes]:
    return await _set_status(request, activity_id, "end")


@post(
    "/v1/admin/activities/{activity_id:str}/stock",
    status_code=200,
    opt=documented(
        callers=OPERATOR,
        description="Add packs to the stock (a positive delta) or remove some (negative, never below zero left).",
        body=StockChange,
        answer=ActivityRecord,
        refusals=(Outcome.STATE_CONFLICT, Outcome.OVER_BUDGET),
        scripts=True,
    ),
)
async def change_stock(request: Request[Any, Any, Any], activity_id: FromPath[str]) -> Response[bytes]:
    """Add (positive ``delta``) or remove (negative; never below zero left) packs."""
    operator = auth.operator(request)
    bodies.only_query(request)
    body = await bodies.body(request, StockChange)
    body.check()  # the request's shape before the domain
    activity = await _mirrored(request, activity_id)
    await auth.services(request).admin.restock(activity, body, operator, int(clock.now()))
    return as_json(await _live_record(request, activity))


@post(
    "/v1/admin/activities/{activity_id:str}/grants",
    status_code=200,
    opt=documented(
        callers=OPERATOR,
        description="Push the activity's pack to up to 10,000 users, each user's result carrying its own refusal.",
        idempotency=True,
        body=GrantBody,
        answer=GrantResults,
        refusals=(Outcome.IDEMPOTENCY_CONFLICT,),
        scripts=True,
    ),
)
async def grant(request: Request[Any, Any, Any], activity_id: FromPath[str]) -> Response[bytes]:
    """Push the pack to up to 10,000 users: ``{results:[{user_id, claim_id?, error?}]}``, each user's refusal
    its own. Window and eligibility are skipped; pause, end, blocklist, per-user limit and stock hold. With an
    Idempotency-Key, a retry replays every final result and judges again only the users whose result was
    ``overloaded`` (temporary, or unknown); nobody is granted twice."""
    operator = auth.operator(request)
    bodies.only_query(request)
    body = await bodies.body(request, GrantBody)
    body.check()  # the request's shape before the domain
    key = bodies.idempotency_key(request)
    activity = await _mirrored(request, activity_id)
    answer = await auth.services(request).grants.grant(activity.id, body, operator, key)
    return Response(answer, media_type=JSON)


ROUTES = [
    create_template,
    list_templates,
    create_activity,
    list_activities,
    get_activity,
    patch_activity,
    pause_activity,
    resume_activity,
    end_activity,
    change_stock,
    grant,
]
