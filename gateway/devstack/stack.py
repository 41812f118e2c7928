"""The embedded default: a real Valkey and a real Postgres of our own when no URL is configured, then the
gateway (granian) and the worker as child processes. Everything started is recorded in a pidfile, so a run
that was killed is cleaned up by the next one."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gateway.devstack.pidfile import PidFile, free_port, spawn, stop_pid
from gateway.devstack.postgres import PostgresServer, start_postgres, stop_postgres
from gateway.devstack.valkey import ValkeyServer, start_valkey, stop_valkey
from gateway.settings import PREFIX

READY_TIMEOUT_SECONDS = 60
GATEWAY_TARGET = "gateway.http.app:app_from_env"  # in the cmdline once `serve` has exec'd granian


@dataclass
class Stack:
    workdir: Path
    pidfile: PidFile
    env: dict[str, str]
    gateway_url: str = ""
    ops_url: str = ""  # the gateway's operations listener (detailed readiness)
    valkey: ValkeyServer | None = None
    postgres: PostgresServer | None = None
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        for child in reversed(self.children):
            stop_pid(child.pid)
            self.pidfile.remove(child.pid)
        self.children.clear()
        if self.postgres is not None:
            stop_postgres(self.postgres, self.pidfile)
            self.postgres = None
        if self.valkey is not None:
            stop_valkey(self.valkey, self.pidfile)
            self.valkey = None


def made_up_settings(env: dict[str, str]) -> dict[str, str]:
    """Secret and keys for a development stack, unless the environment gives them."""
    made = {
        PREFIX + "JWT_SECRET": secrets.token_urlsafe(48),
        PREFIX + "API_KEYS": "dev-operator:" + secrets.token_urlsafe(24),
        PREFIX + "SERVICE_KEYS": secrets.token_urlsafe(24),
        PREFIX + "CODE_HASH_KEY": secrets.token_urlsafe(48),
    }
    return {name: env.get(name) or value for name, value in made.items()}


def start_stack(workdir: Path, *, gateway_port: int | None = None, workers: int = 1) -> Stack:
    workdir.mkdir(parents=True, exist_ok=True)
    pidfile = PidFile(workdir / "pids.json")
    ended = pidfile.reap_stale()
    if ended:
        print(f"stopped {len(ended)} server(s) a previous run left behind: pids {ended}", flush=True)
    env = dict(os.environ)
    env.update(made_up_settings(env))
    stack = Stack(workdir, pidfile, env)
    try:
        if not env.get(PREFIX + "REDIS_URL"):
            fsync = "always" if env.get(PREFIX + "DURABILITY") == "safe" else "everysec"
            stack.valkey = start_valkey(
                workdir / "valkey", appendonly=True, appendfsync=fsync, pidfile=pidfile
            )
            env[PREFIX + "REDIS_URL"] = stack.valkey.url
        if not env.get(PREFIX + "DATABASE_URL"):
            stack.postgres = start_postgres(workdir / "postgres", durable=True, pidfile=pidfile)
            env[PREFIX + "DATABASE_URL"] = stack.postgres.url
        subprocess.run([sys.executable, "-m", "claimgate.cli", "migrate"], env=env, check=True)
        port = gateway_port or free_port()
        stack.gateway_url = f"http://127.0.0.1:{port}"
        for name in ("OPS_PORT", "WORKER_OPS_PORT"):  # free ones, unless configured: never a clash
            env[PREFIX + name] = env.get(PREFIX + name) or str(free_port())
        stack.ops_url = f"http://127.0.0.1:{env[PREFIX + 'OPS_PORT']}"
        gateway = spawn(
            [
                sys.executable,
                "-m",
                "claimgate.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            workdir / "gateway.log",
            env=env,
        )
        stack.children.append(gateway)
        pidfile.add(gateway.pid, "gateway", GATEWAY_TARGET)
        worker = spawn([sys.executable, "-m", "claimgate.cli", "worker"], workdir / "worker.log", env=env)
        stack.children.append(worker)
        pidfile.add(worker.pid, "worker", "claimgate.cli")
        wait_ready(stack.gateway_url, gateway)
    except BaseException:
        stack.stop()
        raise
    return stack


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    last = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode}; see its log")
        try:
            reply = httpx.get(f"{url}/readyz", timeout=2)
            if reply.status_code == 200:  # Redis answers, the scripts are loaded, the fence is open
                return
            last = reply.text
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(f"the gateway was not ready within {READY_TIMEOUT_SECONDS}s: {last}")
