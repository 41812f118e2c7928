"""User routes of the claim path."""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, post
from litestar.params import FromPath
from msgspec import Meta

from gateway.campaign import NO_CONTROL_CHARACTERS
from gateway.http import auth, bodies
from gateway.http.answers import ClaimAnswer
from gateway.http.errors import JSON
from gateway.http.openapi import documented
from gateway.outcomes import DomainError, Outcome

USER_BODY_LIMIT = 16 * 1024
CLAIM_REFUSALS = (
    Outcome.IDEMPOTENCY_CONFLICT,
    Outcome.BLOCKED,
    Outcome.NOT_STARTED,
    Outcome.ENDED,
    Outcome.PAUSED,
    Outcome.SOLD_OUT,
    Outcome.NOT_ELIGIBLE,
    Outcome.LIMIT_REACHED,
)


class ClaimBody(msgspec.Struct, forbid_unknown_fields=True):
    channel: Annotated[str, Meta(min_length=1, max_length=32, pattern=NO_CONTROL_CHARACTERS)] | None = None


@post(
    "/v1/activities/{activity_id:str}/claim",
    status_code=201,
    opt=documented(
        idempotency=True,
        body=ClaimBody,
        body_required=False,
        answer=ClaimAnswer,
        refusals=CLAIM_REFUSALS,
        scripts=True,
    ),
)
async def claim(request: Request[Any, Any, Any], activity_id: FromPath[str]) -> Response[bytes]:
    """Claim one pack of an activity. Answers 201 {claim_id, coupons}; a keyed retry answers the first success."""
    services = auth.services(request)
    who = auth.user(request)
    if request.scope["query_string"]:
        bodies.only_query(request, frozenset())
    raw = await request.body()
    channel = ""
    if raw.strip():
        channel = bodies.decode(raw, ClaimBody, request.headers.get("content-type", "")).channel or ""
    key = bodies.idempotency_key(request)
    if not bodies.PATH_ID.fullmatch(activity_id):
        raise DomainError(Outcome.NOT_FOUND, "No such activity.")
    result = await services.claims.claim(
        activity_id,
        who,
        now=int(time.time()),
        channel=channel,
        idempotency_key=key,
        blocked=services.blocklist.blocks(who.user_id, who.device_id),
    )
    return Response(result.answer.encode(), status_code=201, media_type=JSON)


ROUTES = [claim]
