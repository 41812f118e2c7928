"""The worker's operations listener: its detailed readiness on a loopback port of its own."""

from __future__ import annotations

import asyncio

import httpx

from gateway.devstack.pidfile import free_port
from gateway.settings import Settings, load_settings
from tests.conftest import settings_env
from worker.consumer import run_worker


async def test_the_worker_answers_its_readiness_on_its_operations_port(
    settings: Settings, clean: None
) -> None:
    port = free_port()
    env = settings_env(settings.redis.url, settings.postgres.url, worker_ops_port=str(port))
    stop = asyncio.Event()
    running = asyncio.create_task(run_worker(load_settings(env), stop))
    try:
        found: dict[str, object] = {}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            for _ in range(100):
                try:
                    reply = await http.get("/readyz")
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
                    continue
                found = reply.json()
                if reply.status_code == 200 and found.get("fence") == "open":
                    break
                await asyncio.sleep(0.05)
            assert found["redis"] == "ok" and found["postgres"] == "ok" and found["status"] == "ready", found
            assert set(found["lanes"]) == {"activities", "others"}, found  # type: ignore[arg-type]
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            assert (await http.post("/readyz")).status_code == 405
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
