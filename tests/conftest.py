"""Real servers for the whole session: Valkey in cluster mode (one node owning every slot, so a cross-slot
script fails) and Postgres, each on a free port, stopped by pid at the end; servers a killed earlier session
left behind are stopped first, from the pidfile."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis
from litestar.testing import AsyncTestClient

from gateway import clock
from gateway.devstack.pidfile import PidFile
from gateway.devstack.postgres import PostgresServer, start_postgres, stop_postgres
from gateway.devstack.valkey import ValkeyServer, start_valkey, stop_valkey
from gateway.http.app import create_app
from gateway.keys import KeySpace
from gateway.migrate import migrate
from gateway.scripts.fence import Fence
from gateway.scripts.registry import load_scripts
from gateway.scripts.runner import RedisClient, ScriptRunner, connect
from gateway.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
JWT_SECRET = "test-secret-test-secret-test-secret-0123"
API_KEY = "alice-key-0123456789abcdef"
OTHER_API_KEY = "bob-key-0123456789abcdef01"
SERVICE_KEY = "svc-key-0123456789abcdef"
CODE_HASH_KEY = "code-hash-key-0123456789abcdef-0123456789"


@pytest.fixture(scope="session")
def server_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="claimgate-tests-"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pidfile() -> PidFile:
    state = ROOT / ".pytest-servers"
    state.mkdir(exist_ok=True)
    pids = PidFile(state / "pids.json")
    pids.reap_stale()
    return pids


@pytest.fixture(scope="session")
def valkey(server_dir: Path, pidfile: PidFile) -> Iterator[ValkeyServer]:
    server = start_valkey(server_dir / "valkey", cluster=True, maxmemory="1gb", pidfile=pidfile)
    yield server
    stop_valkey(server, pidfile)


@pytest.fixture(scope="session")
def postgres(server_dir: Path, pidfile: PidFile) -> Iterator[PostgresServer]:
    server = start_postgres(server_dir / "postgres", pidfile=pidfile)
    yield server
    stop_postgres(server, pidfile)


def settings_env(redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
    env = {
        "CLAIMGATE_REDIS_URL": redis_url,
        "CLAIMGATE_DATABASE_URL": database_url,
        "CLAIMGATE_JWT_SECRET": JWT_SECRET,
        "CLAIMGATE_API_KEYS": f"alice:{API_KEY},bob:{OTHER_API_KEY}",
        "CLAIMGATE_SERVICE_KEYS": SERVICE_KEY,
        "CLAIMGATE_CODE_HASH_KEY": CODE_HASH_KEY,
        "CLAIMGATE_WALLET_BUCKETS": "8",
        "CLAIMGATE_CODE_BUCKETS": "4",
        "CLAIMGATE_WORKER_IDLE_SLEEP": "0.02",
        # No fixed port in tests: a test that wants an operations listener names a free one.
        "CLAIMGATE_OPS_PORT": "0",
        "CLAIMGATE_WORKER_OPS_PORT": "0",
    }
    env.update({f"CLAIMGATE_{k.upper()}": v for k, v in extra.items()})
    return env


@pytest.fixture(scope="session")
async def migrated(postgres: PostgresServer) -> str:
    await migrate(postgres.url)
    return postgres.url


@pytest.fixture(scope="session")
def settings(valkey: ValkeyServer, migrated: str) -> Settings:
    return load_settings(settings_env(valkey.url, migrated))


LEDGER_TABLES = (
    "templates, activities, streams, claims, coupons, coupon_events, idempotency_records, partition_marks,"
    " conflicts, audit, blocklist, orders, code_batches, codes, held_entries"
)


def flush_redis(url: str) -> None:
    with redis.Redis.from_url(url) as client:
        client.flushall()


async def empty_stores(settings: Settings) -> None:
    """Empty Redis and the ledger together (emptying one alone would look like a rollback to the fence)."""
    flush_redis(settings.redis.url)
    conn = await asyncpg.connect(settings.postgres.url)
    try:
        await conn.execute(f"TRUNCATE {LEDGER_TABLES}")
    finally:
        await conn.close()


@pytest.fixture
def moved_clock() -> Iterator[None]:
    """For a test that moves the processes' one clock (``gateway.clock``): put back as it was afterwards."""
    yield
    clock.reset()


@pytest.fixture
async def clean(settings: Settings) -> None:
    await empty_stores(settings)


@pytest.fixture
async def redis_client(settings: Settings, clean: None) -> AsyncIterator[RedisClient]:
    client = await connect(settings.redis.url)
    yield client
    await client.aclose()


@pytest.fixture
async def runner(redis_client: RedisClient) -> ScriptRunner:
    runner = ScriptRunner(redis_client, load_scripts(), Fence(open_=True))
    await runner.load_all()
    return runner


@pytest.fixture
def keyspace(settings: Settings) -> KeySpace:
    return KeySpace(settings.redis.wallet_buckets, settings.redis.code_buckets)


@pytest.fixture
async def db(settings: Settings, clean: None) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(settings.postgres.url, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
async def client(settings: Settings, clean: None) -> AsyncIterator[AsyncTestClient[Any]]:
    """The HTTP app in process (its lifespan starts its services), on a clean slate."""
    async with AsyncTestClient(app=create_app(settings)) as test_client:
        yield test_client
