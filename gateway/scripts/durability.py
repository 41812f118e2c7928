"""What Redis actually runs, against the durability setting the gateway was given (README, "Durability").

fast: AOF with ``appendfsync everysec``. safe: ``appendfsync always``, or, on a single-node Redis with
replicas, ``WAIT`` for ``CLAIMGATE_WAIT_REPLICAS`` after each write. A Redis that runs weaker than asked is
reported by ``/readyz`` and logged at start; it does not stop the gateway (the fence and restore keep it
correct; what it can lose is the stated cost of the weaker setting).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import RedisCluster

from gateway.scripts.runner import RedisClient
from gateway.settings import RedisSettings


async def redis_persistence(client: RedisClient) -> dict[str, str]:
    """``appendonly`` and ``appendfsync`` as Redis runs them (the weakest primary's, on a cluster); empty when
    CONFIG is not allowed (a managed Redis)."""
    try:
        if isinstance(client, RedisCluster):
            found: Any = await client.config_get("append*", target_nodes=RedisCluster.PRIMARIES)
            nodes = [found] if "appendonly" in found else list(found.values())
        else:
            nodes = [await client.config_get("append*")]
    except Exception:
        return {}
    weakest = {"appendonly": "yes", "appendfsync": "always"}
    for node in nodes:
        if node.get("appendonly") != "yes":
            weakest["appendonly"] = "no"
        if node.get("appendfsync") != "always":
            weakest["appendfsync"] = str(node.get("appendfsync"))
    return weakest


def shortfall(settings: RedisSettings, persistence: dict[str, str]) -> str:
    """Why Redis runs weaker than the setting asks; "" when it does not (or cannot be told)."""
    if not persistence:
        return ""
    if persistence["appendonly"] != "yes":
        return (
            f"{settings.durability} asked, but Redis runs without AOF: a Redis restart loses every claim the worker"
            " has not persisted yet (the fence then holds state changes until restore)"
        )
    if (
        settings.durability == "safe"
        and persistence["appendfsync"] != "always"
        and not settings.wait_replicas
    ):
        return (
            f"safe asked, but Redis runs appendfsync {persistence['appendfsync']} and no replica is awaited:"
            " a machine crash can lose about a second of acknowledged writes"
        )
    return ""


async def describe(client: RedisClient, settings: RedisSettings) -> dict[str, object]:
    persistence = await redis_persistence(client)
    report: dict[str, object] = {"setting": settings.durability, "wait_replicas": settings.wait_replicas}
    report["redis"] = (
        f"appendonly {persistence['appendonly']}, appendfsync {persistence['appendfsync']}"
        if persistence
        else "unknown (CONFIG not allowed)"
    )
    problem = shortfall(settings, persistence)
    if problem:
        report["problem"] = problem
    return report
