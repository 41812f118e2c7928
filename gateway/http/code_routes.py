"""Codes: an operator makes a batch (its codes come back once); a user redeems one."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, post
from litestar.params import FromPath
from msgspec import Meta

from gateway import clock
from gateway.http import auth, bodies
from gateway.http.admin_routes import activity_of_path
from gateway.http.answers import ClaimAnswer
from gateway.http.errors import JSON
from gateway.http.openapi import OPERATOR, USER, documented
from gateway.outcomes import Outcome

MAX_BATCH = 100_000
CSV = "text/csv"


class BatchBody(msgspec.Struct, forbid_unknown_fields=True):
    count: Annotated[int, Meta(ge=1, le=MAX_BATCH)]


class BatchAnswer(msgspec.Struct):
    batch_id: str
    codes: list[str]  # XXXX-XXXX-XXXXX; shown this once, kept only as keyed hashes


class RedeemBody(msgspec.Struct, forbid_unknown_fields=True):
    code: Annotated[str, Meta(min_length=1, max_length=64)]


@post(
    "/v1/admin/activities/{activity_id:str}/codes",
    status_code=201,
    opt=documented(
        callers=OPERATOR,
        description="Make count one-use codes for the activity, their packs taken from its stock; the codes are "
        "shown in this answer only (JSON, or CSV under Accept: text/csv), and none for an activity past its "
        "end.",
        body=BatchBody,
        answer=BatchAnswer,
        csv=True,
        refusals=(Outcome.STATE_CONFLICT,),
        scripts=True,
    ),
)
async def make_codes(request: Request[Any, Any, Any], activity_id: FromPath[str]) -> Response[bytes]:
    """Make ``count`` codes, their packs taken from stock; they come back once: ``{batch_id, codes}``, or CSV
    (``batch_id,code``) under ``Accept: text/csv``."""
    operator = auth.operator(request)
    bodies.only_query(request)
    body = await bodies.body(request, BatchBody)
    services = auth.services(request)
    now = int(clock.now())
    activity = await activity_of_path(request, activity_id)
    hot = await services.admin.live_state(activity, now)
    batch = await services.codes.make_batch(activity.id, hot, body.count, operator, now=now)
    if CSV in request.headers.get("accept", ""):
        rows = "".join(f"{batch.batch_id},{code}\r\n" for code in batch.codes)
        return Response(f"batch_id,code\r\n{rows}".encode(), status_code=201, media_type=CSV)
    return Response(
        msgspec.json.encode(BatchAnswer(batch.batch_id, batch.codes)), status_code=201, media_type=JSON
    )


@post(
    "/v1/codes/redeem",
    status_code=201,
    opt=documented(
        callers=USER,
        description="Redeem a code for its activity's pack; the user who redeemed it and asks again gets the "
        "first answer.",
        idempotency=True,
        body=RedeemBody,
        answer=ClaimAnswer,
        refusals=(
            Outcome.RATE_LIMITED,
            Outcome.IDEMPOTENCY_CONFLICT,
            Outcome.BLOCKED,
            Outcome.INVALID_CODE,
            Outcome.NOT_STARTED,
            Outcome.ENDED,
        ),
        scripts=True,
    ),
)
async def redeem_code(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Redeem a code for its activity's pack: 201 ``{claim_id, coupons}``; the same user asking again gets the
    first answer. A wrong code, a typo and a code someone else redeemed are all invalid_code; 10 of those in a
    rolling hour, by the user or the device, and every redeem is rate_limited (with Retry-After)."""
    services = auth.services(request)
    who = auth.user(request)
    bodies.only_query(request)
    body = await bodies.body(request, RedeemBody)
    key = bodies.idempotency_key(request)
    redeemed = await services.codes.redeem(
        who,
        body.code,
        now=int(clock.now()),
        idempotency_key=key,
        blocked=services.blocklist.blocks(who.user_id, who.device_id),
    )
    return Response(redeemed.answer.encode(), status_code=201, media_type=JSON)


ADMIN_ROUTES = [make_codes]
USER_ROUTES = [redeem_code]
