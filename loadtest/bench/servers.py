"""The processes a benchmark run starts besides Valkey and Postgres (``gateway.devstack`` starts those): the
gateway (``claimgate serve``), the bare and naive apps on the gateway's own granian command, and the worker.

Every one is spawned in its own session by ``gateway.devstack.pidfile.spawn``, recorded in the run's pid file
(a killed run's leftovers are ended by the next run) and stopped by its pid, with what is left of its group.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from gateway.devstack.pidfile import PidFile, cmdline_of, free_port, log_tail, spawn, stop_pid
from gateway.devstack.stack import GATEWAY_TARGET, wait_ready

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 60.0
CLAIM_PATH = "/v1/activities/{activity_id}/claim"
# What the bare apps must share with the gateway's granian command (checked, not assumed).
REQUIRED_FLAGS = ("--interface", "asgi", "--loop", "uvloop", "--no-access-log")


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    port: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def granian_flags(cmdline: list[str]) -> list[str]:
    """The gateway's granian options without ``--host``, ``--port`` and the app target: from its command line
    (``python -m granian --interface asgi ... gateway.http.app:app_from_env``)."""
    try:
        start = next(i for i, arg in enumerate(cmdline) if arg == "granian" or arg.endswith("/granian")) + 1
    except StopIteration:
        raise ValueError(f"not a granian command line: {cmdline}") from None
    args = cmdline[start:]
    if not args or args[-1].startswith("-"):
        raise ValueError(f"no app target at the end of the granian command line: {cmdline}")
    args = args[:-1]
    flags: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in ("--host", "--port"):
            skip = True
            continue
        if arg.startswith(("--host=", "--port=")):
            continue
        flags.append(arg)
    missing = [flag for flag in REQUIRED_FLAGS if flag not in flags]
    if missing:
        raise ValueError(f"the gateway's granian command lacks {missing}: {cmdline}")
    return flags


def granian_command(flags: list[str], port: int, target: str) -> list[str]:
    return [sys.executable, "-m", "granian", *flags, "--host", "127.0.0.1", "--port", str(port), target]


def from_checkout(env: dict[str, str], code: Path) -> dict[str, str]:
    """The environment for a server run from ``code`` (its packages first on the path)."""
    return env if code == ROOT else {**env, "PYTHONPATH": str(code)}


def start_gateway(
    env: dict[str, str], workers: int, log: Path, pidfile: PidFile, code: Path = ROOT
) -> Process:
    port = free_port()
    command = [sys.executable, "-m", "claimgate.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = spawn([*command, "--workers", str(workers)], log, env=from_checkout(env, code), cwd=code)
    pidfile.add(proc.pid, "gateway", GATEWAY_TARGET)
    server = Process("gateway", proc, log, port)
    try:
        wait_ready(server.url, proc)
    except BaseException as exc:
        stop(server, pidfile)
        raise RuntimeError(f"the gateway did not start: {exc}; its log:\n{log_tail(log)}") from exc
    return server


def gateway_flags(gateway: Process) -> list[str]:
    return granian_flags(cmdline_of(gateway.pid).split())


def start_app(
    name: str, target: str, flags: list[str], env: dict[str, str], log: Path, pidfile: PidFile
) -> Process:
    """An app on the gateway's granian command; ready once it answers a POST on the claim path."""
    port = free_port()
    proc = spawn(granian_command(flags, port, target), log, env=env, cwd=ROOT)
    pidfile.add(proc.pid, name, target)
    server = Process(name, proc, log, port)
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if proc.poll() is not None:
            stop(server, pidfile)
            raise RuntimeError(f"{name} exited with {proc.returncode}; its log:\n{log_tail(log)}")
        try:
            httpx.post(server.url + CLAIM_PATH.format(activity_id="ping"), timeout=2)
            return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop(server, pidfile)
            raise RuntimeError(
                f"{name} did not answer within {READY_TIMEOUT:.0f}s; its log:\n{log_tail(log)}"
            )
        time.sleep(0.1)


def start_worker(env: dict[str, str], log: Path, pidfile: PidFile, code: Path = ROOT) -> Process:
    proc = spawn(
        [sys.executable, "-m", "claimgate.cli", "worker"], log, env=from_checkout(env, code), cwd=code
    )
    pidfile.add(proc.pid, "worker", "claimgate.cli")
    return Process("worker", proc, log)


def stop(server: Process, pidfile: PidFile) -> None:
    stop_pid(server.pid, 15.0)
    pidfile.remove(server.pid)
