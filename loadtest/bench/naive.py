"""The naive baseline: the same HTTP stack (litestar on the same granian command) with a claim route that does
what a first attempt would do, all in Postgres.

It verifies the same JWT as the gateway (``gateway.tokens.verify_user_token``), then in one transaction takes one
unit (``UPDATE naive_stock SET "left" = "left" - 1 WHERE activity_id = $1 AND "left" > 0``) and records the claim
(``INSERT INTO naive_claims``, unique per activity and user): 201 with the claim, 409 ``sold_out`` when no row
was updated, 409 ``limit_reached`` on the unique violation (the transaction, and so the unit, rolled back).
Settings from the environment: ``CLAIMGATE_JWT_SECRET``, ``CLAIMGATE_DATABASE_URL``, ``BENCH_NAIVE_POOL``
(asyncpg connections per granian worker).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import msgspec
from litestar import Litestar, Request, Response, post

from gateway.outcomes import DomainError
from gateway.settings import PREFIX
from gateway.tokens import verify_user_token

POOL_ENV = "BENCH_NAIVE_POOL"
JSON = "application/json"
SCHEMA = """
CREATE TABLE IF NOT EXISTS naive_stock (
    activity_id text PRIMARY KEY,
    "left"      bigint NOT NULL CHECK ("left" >= 0)
);
CREATE TABLE IF NOT EXISTS naive_claims (
    claim_id    bigserial PRIMARY KEY,
    activity_id text NOT NULL,
    user_id     text NOT NULL,
    device_id   text NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (activity_id, user_id)
);
"""
TAKE = 'UPDATE naive_stock SET "left" = "left" - 1 WHERE activity_id = $1 AND "left" > 0'
RECORD = "INSERT INTO naive_claims (activity_id, user_id, device_id) VALUES ($1, $2, $3) RETURNING claim_id"
SOLD_OUT = b'{"error":"sold_out","message":"No stock left."}'
LIMIT_REACHED = b'{"error":"limit_reached","message":"Already claimed."}'
UNAUTHORIZED = b'{"error":"unauthorized","message":"Bad token."}'


async def prepare(conn: asyncpg.Connection, activities: dict[str, int]) -> None:
    """The two tables, and each named activity's stock (a fresh row; its old claims dropped)."""
    await conn.execute(SCHEMA)
    for activity_id, stock in activities.items():
        await conn.execute("DELETE FROM naive_claims WHERE activity_id = $1", activity_id)
        await conn.execute(
            'INSERT INTO naive_stock (activity_id, "left") VALUES ($1, $2)'
            ' ON CONFLICT (activity_id) DO UPDATE SET "left" = excluded."left"',
            activity_id,
            stock,
        )


def naive_app() -> Litestar:
    """granian ``--factory loadtest.bench.naive:naive_app``."""
    secret = os.environ[PREFIX + "JWT_SECRET"]
    url = os.environ[PREFIX + "DATABASE_URL"]
    size = int(os.environ.get(POOL_ENV, "16"))
    pools: dict[str, asyncpg.Pool] = {}

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        pools["pool"] = await asyncpg.create_pool(url, min_size=size, max_size=size)
        try:
            yield
        finally:
            await pools["pool"].close()

    @post("/v1/activities/{activity_id:str}/claim", status_code=201)
    async def claim(request: Request[Any, Any, Any], activity_id: str) -> Response[bytes]:
        try:
            who = verify_user_token(request.headers.get("authorization"), secret)
        except DomainError:
            return Response(UNAUTHORIZED, status_code=401, media_type=JSON)
        async with pools["pool"].acquire() as conn:
            try:
                async with conn.transaction():
                    if await conn.execute(TAKE, activity_id) == "UPDATE 0":
                        return Response(SOLD_OUT, status_code=409, media_type=JSON)
                    claim_id = await conn.fetchval(RECORD, activity_id, who.user_id, who.device_id)
            except asyncpg.UniqueViolationError:
                return Response(LIMIT_REACHED, status_code=409, media_type=JSON)
        body = msgspec.json.encode(
            {"claim_id": str(claim_id), "activity_id": activity_id, "user_id": who.user_id}
        )
        return Response(body, status_code=201, media_type=JSON)

    return Litestar(route_handlers=[claim], lifespan=[lifespan], logging_config=None, debug=False)
