"""Operations routes, no credential: deploy them on the internal network."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec
from litestar import Request, Response, get

from gateway.durability import describe
from gateway.http import auth
from gateway.http.answers import Health, Readiness
from gateway.http.errors import JSON
from gateway.http.openapi import documented


@get("/healthz", opt=documented(description="The process is alive.", answer=Health))
async def healthz() -> Response[bytes]:
    return Response(b'{"status":"ok"}', media_type=JSON)


@get(
    "/readyz",
    opt=documented(
        description="Ready (200) when Redis answers and every script is loaded, else 503 naming what is "
        "missing; Postgres and the fence are reported, not gating.",
        answer=Readiness,
        scripts=True,
    ),
)
async def readyz(request: Request[Any, Any, Any]) -> Response[bytes]:
    """200 when Redis answers and every script is loaded; Postgres and the fence are reported, not gating."""
    services = auth.services(request)
    missing: list[str] = []
    report: dict[str, object] = {}
    try:
        await services.client.ping()
        report["redis"] = "ok"
        scripts = await services.runner.missing_scripts()
        if scripts:  # a restarted Redis: load them here rather than wait for traffic a probe holds back
            await services.runner.load_all()
            scripts = await services.runner.missing_scripts()
        if scripts:
            missing.append("scripts: " + ", ".join(scripts))
    except Exception as exc:
        report["redis"] = f"unreachable: {exc.__class__.__name__}"
        missing.append("redis")
    try:
        async with services.pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")
        report["postgres"] = "ok"
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        report["postgres"] = f"unreachable: {exc.__class__.__name__}"
    report["fence"] = "open" if services.fence.is_open else f"closed: {services.fence.reason}"
    if "redis" not in missing:
        report["durability"] = await describe(services.client, services.settings.redis)
    report["status"] = "ready" if not missing else "not ready"
    if missing:
        report["missing"] = missing
    return Response(msgspec.json.encode(report), status_code=200 if not missing else 503, media_type=JSON)


ROUTES = [healthz, readyz]
