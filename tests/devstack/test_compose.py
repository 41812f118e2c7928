"""docker-compose.yml checked without a Docker engine: each service's own command, with the compose file's
environment pointed at servers this test starts, must come up and work together."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis
import yaml

from gateway.devstack.pidfile import free_port, spawn, stop_pid
from gateway.devstack.postgres import PostgresServer
from gateway.devstack.stack import wait_ready
from gateway.devstack.valkey import valkey_binary
from gateway.tokens import mint_user_token
from tests.conftest import API_KEY, CODE_HASH_KEY, JWT_SECRET, ROOT, SERVICE_KEY

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
_VARIABLE = re.compile(r"\$\{(\w+):\?[^}]*\}")
_DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")


def interpolate(value: str) -> str:
    """What docker compose does with the file's variables, none of them set: required ones get the test's
    secrets, defaulted ones their default."""
    return _DEFAULTED.sub(lambda m: m[2], _VARIABLE.sub(lambda m: SECRETS[m[1]], value))


SECRETS = {
    "CLAIMGATE_JWT_SECRET": JWT_SECRET,
    "CLAIMGATE_API_KEYS": f"alice:{API_KEY}",
    "CLAIMGATE_SERVICE_KEYS": SERVICE_KEY,
    "CLAIMGATE_CODE_HASH_KEY": CODE_HASH_KEY,
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def service_env(compose: dict[str, Any], name: str, redis_url: str, database_url: str) -> dict[str, str]:
    env = {}
    for key, value in compose["services"][name]["environment"].items():
        value = interpolate(str(value))
        value = value.replace("redis://valkey:6379/0", redis_url)
        env[key] = value.replace("postgresql://claimgate:claimgate@postgres:5432/claimgate", database_url)
    assert env["CLAIMGATE_OPS_HOST"] == "0.0.0.0"  # on the compose network; here: none, no fixed port
    env.update(CLAIMGATE_OPS_HOST="127.0.0.1", CLAIMGATE_OPS_PORT="0", CLAIMGATE_WORKER_OPS_PORT="0")
    return {**os.environ, **env}


def local_command(command: list[str], port: int | None = None) -> list[str]:
    """The compose command run from this venv, listening on loopback."""
    local = [str(BIN / command[0]), *command[1:]]
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        if flag in local:
            local[local.index(flag) + 1] = value
    return local


@pytest.fixture
def compose_valkey(compose: dict[str, Any], tmp_path: Path) -> Iterator[str]:
    """Valkey started with exactly the compose file's flags (plus a loopback port and a data dir)."""
    command = [interpolate(part) for part in compose["services"]["valkey"]["command"]]
    assert command[0] == "valkey-server"
    port = free_port()
    process = spawn(
        [
            str(valkey_binary()),
            *command[1:],
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(tmp_path),
        ],
        tmp_path / "valkey.log",
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        with redis.Redis.from_url(url) as client:
            for _ in range(100):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
        yield url
    finally:
        stop_pid(process.pid)


async def _fresh_database(url: str, name: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name}")
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()


async def _count_claims(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM claims")
        return count
    finally:
        await conn.close()


@pytest.fixture
def compose_database(postgres: PostgresServer) -> str:
    asyncio.run(_fresh_database(postgres.url, "compose_check"))
    return postgres.url.rsplit("/", 1)[0] + "/compose_check"


def test_valkey_runs_with_aof_and_noeviction(compose_valkey: str) -> None:
    with redis.Redis.from_url(compose_valkey, decode_responses=True) as client:
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert int(client.config_get("maxmemory")["maxmemory"]) > 0


def test_dockerfile_copies_what_exists_and_every_package_it_installs() -> None:
    copied = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
                copied.add(source)
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert {pattern.rstrip("*").split(".")[0] for pattern in patterns["include"]} <= copied


def test_services_come_up_and_drain_a_claim(
    compose: dict[str, Any], compose_valkey: str, compose_database: str, tmp_path: Path
) -> None:
    services = compose["services"]
    env = {
        name: service_env(compose, name, compose_valkey, compose_database)
        for name in ("migrate", "gateway", "worker", "locust")
    }
    subprocess.run(local_command(services["migrate"]["command"]), env=env["migrate"], check=True, timeout=60)
    port = free_port()
    gateway_command = local_command(services["gateway"]["command"], port)
    assert gateway_command[gateway_command.index("--workers") + 1] == "2"
    started = []
    try:
        gateway = spawn(gateway_command, tmp_path / "gateway.log", env=env["gateway"])
        started.append(gateway)
        started.append(
            spawn(local_command(services["worker"]["command"]), tmp_path / "worker.log", env=env["worker"])
        )
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, gateway)
        assert httpx.get(f"{base}/readyz").status_code == 200
        admin = {"X-API-Key": API_KEY}
        now = int(time.time())
        with httpx.Client(base_url=base) as http:
            template = http.post(
                "/v1/admin/templates",
                headers=admin,
                json={"name": "t", "kind": "cash", "amount_off": 100, "valid_days": 1},
            ).json()
            activity = http.post(
                "/v1/admin/activities",
                headers=admin,
                json={
                    "name": "a",
                    "pack": [{"template_id": template["id"], "count": 1}],
                    "starts_at": now - 1,
                    "ends_at": now + 600,
                    "stock": 5,
                    "per_user_limit": 1,
                },
            ).json()
            token = mint_user_token(JWT_SECRET, "compose-user", "compose-device")
            claimed = http.post(
                f"/v1/activities/{activity['id']}/claim", headers={"Authorization": f"Bearer {token}"}
            )
            assert claimed.status_code == 201, claimed.text
        deadline = time.monotonic() + 10
        while asyncio.run(_count_claims(compose_database)) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert asyncio.run(_count_claims(compose_database)) == 1

        locust = local_command(services["locust"]["command"])
        locust[locust.index("--host") + 1] = base
        done = subprocess.run(
            [*locust, "--headless", "-u", "4", "-r", "4", "-t", "3s", "--only-summary"],
            env={**env["locust"], "LOADTEST_ACTIVITY": activity["id"], "LOADTEST_USERS": "200"},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "claim" in done.stderr + done.stdout
    finally:
        for process in started:
            stop_pid(process.pid)
