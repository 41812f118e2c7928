"""Operators' figures (``X-API-Key``): an activity's live stats and the deployment's persistence and load."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.params import FromPath

from gateway import clock
from gateway.catalog import store
from gateway.checkout.service import checkout_figures
from gateway.claim.shedding import dead_letter_count, stream_lags
from gateway.codes.batches import codes_redeemed
from gateway.http import auth, bodies
from gateway.http.admin_routes import activity_of_path, as_json
from gateway.http.answers import ActivityStats, LedgerStats
from gateway.http.openapi import OPERATOR, documented


@get(
    "/v1/admin/activities/{activity_id:str}/stats",
    opt=documented(
        callers=OPERATOR,
        description="An activity's live figures: packs left, claimed and persisted, coupons locked and redeemed, "
        "and their values.",
        answer=ActivityStats,
        scripts=True,
    ),
)
async def activity_stats(request: Request[Any, Any, Any], activity_id: FromPath[str]) -> Response[bytes]:
    """Live figures: packs left and handed out (claims, grants, redeemed codes: Redis), packs persisted (the
    ledger), face value out; coupons locked and redeemed and the discounts redeemed (Redis, every wallet bucket).
    A retired activity's packs left and handed out come from the ledger (``AdminService.live_state``): the
    figures Redis held when it left."""
    auth.operator(request)
    bodies.only_query(request)
    services = auth.services(request)
    activity = await activity_of_path(request, activity_id)
    hot = await services.admin.live_state(activity, int(clock.now()))
    claimed = int(hot["taken"]) + await codes_redeemed(services.client, services.keyspace, activity.id)
    persisted = await store.persisted_claims(services.pool, activity.id)
    lags = await stream_lags(services.redis.polls, [services.keyspace.activity(activity.id).events])
    lag = lags[0].total if lags else 0  # a retired activity's stream is gone: nothing waits in it
    figures = await checkout_figures(services.client, services.keyspace, activity.id)
    return as_json(
        {
            "stock_left": int(hot["stock_left"]),
            "claimed": claimed,
            "persisted": persisted,
            "face_value_out": claimed * activity.face_per_pack,
            "lag": lag,
            "conflicts": await store.conflicts(services.pool, activity.id),
            "locked": figures.locked,
            "redeemed": figures.redeemed,
            "redeemed_value": figures.redeemed_value,
        }
    )


@get(
    "/v1/admin/stats",
    opt=documented(
        callers=OPERATOR,
        description="Persistence and load now: stream lag, Redis memory, shedding, conflicts, dead letters and "
        "the fence.",
        answer=LedgerStats,
        scripts=True,
    ),
)
async def ledger_stats(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Persistence and load: lag, Redis memory, shedding, conflicts, dead letters and the fence, measured now."""
    auth.operator(request)
    bodies.only_query(request)
    services = auth.services(request)
    load = await services.load.measure(services.redis.polls, services.client, services.pool, every=True)
    dead = await dead_letter_count(services.client, await services.load.streams(services.pool))
    conflicts = await store.conflicts(services.pool)
    settings = services.settings.shed
    return as_json(
        LedgerStats(
            lag=load.lag,
            lag_limit=services.load.lag_limit(load),
            memory_used=load.memory_used,
            memory_max=load.memory_max,
            memory_limit=settings.memory,
            shedding=services.load.shedding,
            conflicts=conflicts,
            dead_letters=dead,
            fence="open" if services.fence.is_open else f"closed: {services.fence.why_closed}",
            measured_at=load.measured_at,
        )
    )


ROUTES = [activity_stats, ledger_stats]
