"""Everything a gateway process holds: clients, scripts, the fence, the blocklist copy and the services."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import asyncpg

from gateway import ledger_check
from gateway.admin import AdminService
from gateway.blocklist import Blocklist
from gateway.claims import ClaimService
from gateway.fence import Fence
from gateway.keys import KeySpace
from gateway.redis_client import RedisClient, ScriptRunner, connect
from gateway.scripts import load_scripts
from gateway.settings import Settings
from gateway.store import register_streams


@dataclass
class Services:
    settings: Settings
    client: RedisClient
    pool: asyncpg.Pool
    keyspace: KeySpace
    fence: Fence
    runner: ScriptRunner
    blocklist: Blocklist
    claims: ClaimService
    admin: AdminService
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(cls, settings: Settings, *, background: bool = True) -> Services:
        client = await connect(settings.redis.url, max_connections=settings.redis.max_connections)
        pool = await asyncpg.create_pool(
            settings.postgres.url, min_size=0, max_size=settings.postgres.pool_max, timeout=5
        )
        keyspace = KeySpace(settings.redis.wallet_buckets, settings.redis.code_buckets)
        fence = Fence()
        runner = ScriptRunner(client, load_scripts(), fence, max_in_flight=settings.redis.max_connections)
        await runner.load_all()
        blocklist = Blocklist()
        services = cls(
            settings=settings,
            client=client,
            pool=pool,
            keyspace=keyspace,
            fence=fence,
            runner=runner,
            blocklist=blocklist,
            claims=ClaimService(runner, keyspace, settings.claim.idempotency_ttl_seconds),
            admin=AdminService(pool, runner, keyspace),
        )
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            await register_streams(pool, keyspace.wallet_partitions(), kind="wallet")
            await register_streams(pool, keyspace.code_partitions(), kind="code")
        with contextlib.suppress(Exception):
            await blocklist.refresh(client)
        await ledger_check.check(client, pool, fence)
        if background:
            services.tasks = [
                asyncio.create_task(blocklist.keep_fresh(client, settings.claim.blocklist_refresh_seconds)),
                asyncio.create_task(ledger_check.watch(client, pool, fence)),
            ]
        return services

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.client.aclose()
        await self.pool.close()
