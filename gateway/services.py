"""Everything a gateway process holds: clients, scripts, the fence, the blocklist copy and the services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import asyncpg
from redis.asyncio import RedisCluster

from gateway.background import stop_tasks
from gateway.catalog.admin import AdminService
from gateway.catalog.retirement import Reviver
from gateway.catalog.store import register_streams
from gateway.checkout.service import CheckoutService
from gateway.checkout.terms import TermsCache
from gateway.checkout.wallet import WalletService
from gateway.claim.blocklist import Blocklist
from gateway.claim.grants import GrantService
from gateway.claim.service import ClaimService
from gateway.claim.shedding import LoadWatch
from gateway.claim.sold_out import SoldOutMarks
from gateway.codes.service import CodeService
from gateway.keys import BLOCKLIST, KeySpace
from gateway.scripts import ledger_check
from gateway.scripts.durability import redis_persistence, shortfall
from gateway.scripts.fence import Fence
from gateway.scripts.registry import load_scripts
from gateway.scripts.runner import SOCKET_TIMEOUT_SECONDS, RedisClient, ScriptRunner, connect
from gateway.scripts.transport import PipelinedCommands, PipelinedScripts
from gateway.settings import Settings
from gateway.tokens import VerifiedTokens

log = logging.getLogger(__name__)


@dataclass
class Clients:
    """The script client (guarded by the fence, no retries) and the control client, plus the runner; and
    ``polls``, the unfenced pipelined link the stream reads and lag measures go through (many small commands)."""

    scripts: RedisClient
    control: RedisClient
    fence: Fence
    runner: ScriptRunner
    pipelined: PipelinedScripts
    polls: PipelinedCommands

    @classmethod
    async def open(cls, settings: Settings, fence: Fence | None = None) -> Clients:
        fence = fence or Fence()
        size = settings.redis.max_connections
        control = await connect(settings.redis.url, max_connections=8)
        scripts = await connect(settings.redis.url, max_connections=size, guard=fence)
        pipelined = PipelinedScripts(
            settings.redis.url,
            fence,
            cluster=control if isinstance(control, RedisCluster) else None,
            timeout=SOCKET_TIMEOUT_SECONDS,
        )
        runner = ScriptRunner(
            scripts,
            load_scripts(),
            fence,
            control=control,
            max_in_flight=size,
            wait_replicas=settings.redis.wait_replicas,
            wait_timeout_ms=settings.redis.wait_timeout_ms,
            pipelined=pipelined,
        )
        await runner.load_all()
        cluster = control if isinstance(control, RedisCluster) else None
        polls = PipelinedCommands(settings.redis.url, cluster=cluster, timeout=SOCKET_TIMEOUT_SECONDS)
        return cls(scripts, control, fence, runner, pipelined, polls)

    async def close(self) -> None:
        self.pipelined.close()
        self.polls.close()
        await self.scripts.aclose()
        await self.control.aclose()


async def register_fixed_streams(pool: asyncpg.Pool, keyspace: KeySpace) -> None:
    await register_streams(pool, keyspace.wallet_partitions(), kind="wallet")
    await register_streams(pool, keyspace.code_partitions(), kind="code")
    await register_streams(pool, [BLOCKLIST], kind="blocklist")


@dataclass
class Services:
    settings: Settings
    redis: Clients
    pool: asyncpg.Pool
    keyspace: KeySpace
    blocklist: Blocklist
    load: LoadWatch
    claims: ClaimService
    admin: AdminService
    grants: GrantService
    wallet: WalletService
    terms: TermsCache
    checkout: CheckoutService
    codes: CodeService
    tokens: VerifiedTokens
    sold_out: SoldOutMarks
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def fence(self) -> Fence:
        return self.redis.fence

    @property
    def runner(self) -> ScriptRunner:
        return self.redis.runner

    @property
    def client(self) -> RedisClient:
        """The control client: reads outside scripts (blocklist, stats, readiness)."""
        return self.redis.control

    @classmethod
    async def start(cls, settings: Settings, *, background: bool = True) -> Services:
        redis = await Clients.open(settings)
        pool = await asyncpg.create_pool(
            settings.postgres.url, min_size=0, max_size=settings.postgres.pool_max, timeout=5
        )
        keyspace = KeySpace(settings.redis.wallet_buckets, settings.redis.code_buckets)
        blocklist = Blocklist()
        terms = TermsCache(pool)
        load = LoadWatch(settings.shed, keyspace)
        claims = ClaimService(redis.runner, keyspace, settings.claim.idempotency_ttl_seconds, shed=load.check)
        sold_out = SoldOutMarks()
        reviver = Reviver(pool, redis.runner, keyspace)  # one per process: one revival per activity at a time
        services = cls(
            settings=settings,
            redis=redis,
            pool=pool,
            keyspace=keyspace,
            blocklist=blocklist,
            load=load,
            claims=claims,
            admin=AdminService(pool, redis.runner, keyspace, changed=sold_out.clear, reviver=reviver),
            grants=GrantService(
                redis.runner, keyspace, claims, blocklist, settings.claim.idempotency_ttl_seconds, reviver
            ),
            wallet=WalletService(redis.runner, keyspace, pool),
            terms=terms,
            checkout=CheckoutService(redis.runner, keyspace, terms, settings.checkout.lock_seconds),
            codes=CodeService(
                redis.runner,
                keyspace,
                pool,
                claims,
                settings.checkout.code_hash_key.encode(),
                settings.claim.idempotency_ttl_seconds,
            ),
            tokens=VerifiedTokens(settings.auth.jwt_secret),
            sold_out=sold_out,
        )
        try:
            await register_fixed_streams(pool, keyspace)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("Postgres unreachable at start: %r", exc)
        with contextlib.suppress(Exception):
            await services.blocklist.refresh(redis.control)
        with contextlib.suppress(Exception):
            await ledger_check.check(redis.control, pool, redis.fence)
        with contextlib.suppress(Exception):
            await ledger_check.check_clock(redis.control, redis.fence, settings.claim.max_clock_skew_seconds)
        with contextlib.suppress(Exception):
            problem = shortfall(settings.redis, await redis_persistence(redis.control))
            if problem:
                log.warning("durability: %s", problem)
        if background:
            services.tasks = [
                asyncio.create_task(
                    services.blocklist.keep_fresh(redis.control, settings.claim.blocklist_refresh_seconds)
                ),
                asyncio.create_task(
                    ledger_check.watch(
                        redis.control,
                        pool,
                        redis.fence,
                        scripts=redis.scripts,
                        max_skew=settings.claim.max_clock_skew_seconds,
                    )
                ),
                asyncio.create_task(load.keep_measuring(redis.polls, redis.control, pool)),
                asyncio.create_task(sold_out.keep_checking(redis.control, keyspace)),
            ]
        return services

    async def stop(self) -> None:
        await stop_tasks(self.tasks)
        await self.redis.close()
        await self.pool.close()
