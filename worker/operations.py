"""The worker's operations listener: its detailed readiness and liveness, on a loopback port of its own."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from gateway import probes
from gateway.ops_listener import Route

if TYPE_CHECKING:
    from worker.consumer import Consumer


def operations(consumer: Consumer, lanes: list[Consumer]) -> dict[str, Route]:
    """The worker's operations listener: ``/readyz`` (200 when Redis and Postgres answer: it can persist; the
    fence and, per lane, its streams (how many live), what it persisted) and ``/healthz``."""

    async def detailed() -> tuple[int, bytes]:
        report: dict[str, object] = {
            "redis": await probes.redis_state(consumer.client),
            "postgres": await probes.postgres_state(consumer.pool),
        }
        missing = [name for name in ("redis", "postgres") if report[name] != probes.OK]
        fence = consumer.redis.fence
        report["fence"] = "open" if fence.is_open else f"closed: {fence.why_closed}"
        report["lanes"] = {
            lane.lane_name: {
                "streams": len(lane.streams),
                "live": len(lane.plan.live),
                "persisted": lane.persisted,
                "conflicts": lane.conflicts,
                "dead_lettered": lane.dead_lettered,
            }
            for lane in lanes
        }
        report["status"] = "ready" if not missing else "not ready"
        if missing:
            report["missing"] = missing
        return (200 if not missing else 503), msgspec.json.encode(report)

    async def alive() -> tuple[int, bytes]:
        return 200, b'{"status":"ok"}'

    return {"/readyz": detailed, "/healthz": alive}
