"""Operators' blocklist routes (``X-API-Key``). A change reaches every gateway within one refresh interval."""

from __future__ import annotations

import re
from typing import Any

from litestar import Request, Response, get, post

from gateway import clock
from gateway.catalog.campaign import BlocklistChange
from gateway.http import auth, bodies
from gateway.http.admin_routes import as_json
from gateway.http.answers import BlocklistChanged, BlocklistPage
from gateway.http.openapi import OPERATOR, documented
from gateway.scripts.calls.catalog import BlocklistAction

_CURSOR = re.compile(r"([0-9]{1,15})\.(user|device)\.([A-Za-z0-9_.:-]{1,64})")
_QUERY = (bodies.LIMIT, bodies.cursor_query(_CURSOR))


async def _change(request: Request[Any, Any, Any], action: BlocklistAction) -> Response[bytes]:
    operator = auth.operator(request)
    bodies.only_query(request)
    body = await bodies.body(request, BlocklistChange)
    changed = await auth.services(request).admin.change_blocklist(action, body, operator, int(clock.now()))
    return as_json({"changed": changed})


@post(
    "/v1/admin/blocklist",
    status_code=200,
    opt=documented(
        callers=OPERATOR,
        description="Block users and devices from claiming, redeeming codes and receiving grants.",
        body=BlocklistChange,
        answer=BlocklistChanged,
        scripts=True,
    ),
)
async def add_to_blocklist(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Block users and devices from claiming, redeeming codes and receiving grants."""
    return await _change(request, "add")


@post(
    "/v1/admin/blocklist/remove",
    status_code=200,
    opt=documented(
        callers=OPERATOR,
        description="Take users and devices off the blocklist.",
        body=BlocklistChange,
        answer=BlocklistChanged,
        scripts=True,
    ),
)
async def remove_from_blocklist(request: Request[Any, Any, Any]) -> Response[bytes]:
    return await _change(request, "remove")


@get(
    "/v1/admin/blocklist",
    opt=documented(
        callers=OPERATOR,
        description="The blocked users and devices, newest first, a page at a time.",
        query=_QUERY,
        answer=BlocklistPage,
    ),
)
async def list_blocklist(request: Request[Any, Any, Any]) -> Response[bytes]:
    """``{items:[{kind, id, added_at, by}], next_cursor}``, newest first."""
    auth.operator(request)
    bodies.only_query(request)
    limit = bodies.list_limit(request)
    raw_cursor = request.query_params.get("cursor")
    if raw_cursor is not None and not _CURSOR.fullmatch(raw_cursor):
        raise bodies.invalid_request("cursor is malformed.", "cursor")
    entries = await auth.services(request).admin.blocklist_entries()
    if raw_cursor is not None:
        match = _CURSOR.fullmatch(raw_cursor)
        assert match is not None
        after = (-int(match[1]), match[2], match[3])
        entries = [e for e in entries if (-e.added_at, e.kind, e.id) > after]
    page: dict[str, object] = {"items": entries[:limit]}
    if len(entries) > limit:
        page["next_cursor"] = entries[limit - 1].cursor
    return as_json(page)


ROUTES = [add_to_blocklist, remove_from_blocklist, list_blocklist]
