"""Operations routes, no credential: deploy them on the internal network."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get

from gateway import probes
from gateway.http import auth
from gateway.http.answers import Health, PublicReadiness
from gateway.http.errors import JSON
from gateway.http.openapi import documented
from gateway.ops_listener import Route
from gateway.scripts.durability import describe
from gateway.services import Services


@get("/healthz", opt=documented(description="The process is alive.", answer=Health))
async def healthz() -> Response[bytes]:
    return Response(b'{"status":"ok"}', media_type=JSON)


@get(
    "/readyz",
    opt=documented(
        description="Ready (200) when Redis answers, every script is loaded and the fence is open; else 503 "
        "naming what is missing (redis, scripts, fence) and nothing more: the details are on the operations "
        "listener.",
        answer=PublicReadiness,
        scripts=True,
    ),
)
async def readyz(request: Request[Any, Any, Any]) -> Response[bytes]:
    """200 when Redis answers, every script is loaded and the fence is open; else 503 naming what is missing
    (``redis``, ``scripts``, ``fence``). Nothing else: run ids, partitions and memory are the operations
    listener's to show."""
    _, report = await readiness(auth.services(request))
    missing = [name for name in ("redis", "scripts", "fence") if name in report.get("missing_parts", ())]
    answer = PublicReadiness(status="ready" if not missing else "not ready", missing=missing or None)
    return Response(msgspec.json.encode(answer), status_code=200 if not missing else 503, media_type=JSON)


async def readiness(services: Services) -> tuple[int, dict[str, Any]]:
    """The detailed readiness (the operations listener's ``/readyz``): 200 when Redis answers and every script is
    loaded; Postgres and the fence are reported, not gating. ``missing_parts`` names what the public answer
    lists."""
    missing: list[str] = []
    parts: list[str] = []
    report: dict[str, Any] = {}
    try:
        await services.client.ping()
        report["redis"] = "ok"
        scripts = await services.runner.missing_scripts()
        if scripts:  # a restarted Redis: load them here rather than wait for traffic a probe holds back
            await services.runner.load_all()
            scripts = await services.runner.missing_scripts()
        if scripts:
            missing.append("scripts: " + ", ".join(scripts))
            parts.append("scripts")
    except Exception as exc:
        report["redis"] = f"unreachable: {exc.__class__.__name__}"
        missing.append("redis")
        parts.append("redis")
    report["postgres"] = await probes.postgres_state(services.pool)
    report["fence"] = "open" if services.fence.is_open else f"closed: {services.fence.why_closed}"
    if not services.fence.is_open:
        parts.append("fence")
    if "redis" not in missing:
        report["durability"] = await describe(services.client, services.settings.redis)
    report["status"] = "ready" if not missing else "not ready"
    if missing:
        report["missing"] = missing
    report["missing_parts"] = parts
    return (200 if not missing else 503), report


def operations(services: Services) -> dict[str, Route]:
    """The operations listener's routes over this process's services."""

    async def detailed() -> tuple[int, bytes]:
        status, report = await readiness(services)
        report.pop("missing_parts")
        return status, msgspec.json.encode(report)

    async def alive() -> tuple[int, bytes]:
        return 200, b'{"status":"ok"}'

    return {"/readyz": detailed, "/healthz": alive}


ROUTES = [healthz, readyz]
