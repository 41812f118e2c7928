"""What every phase of a run shares: its options, the servers it started, its tokens and activities, and where
a phase puts what it measured (tagged with the round it ran in)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import redis

from gateway.devstack.pidfile import PidFile
from gateway.devstack.postgres import PostgresServer
from gateway.devstack.valkey import ValkeyServer
from gateway.settings import PREFIX
from loadtest.bench import servers
from loadtest.bench.catalog import Activity
from loadtest.bench.phases import activity_key
from loadtest.bench.procs import CpuWatch
from loadtest.bench.results import Figure, Phase, Results
from loadtest.bench.servers import Process
from loadtest.bench.tokens import TokenFile

FSYNC = {"fast": "everysec", "safe": "always"}


class Session:
    def __init__(self, args: argparse.Namespace, results: Results) -> None:
        self.a = args
        self.results = results
        self.began = time.monotonic()
        self.base = Path(args.workdir).resolve()
        self.dir = self.base / f"run-{os.getpid()}"
        self.pidfile = PidFile(self.base / "pids.json")
        self.primary = "safe" if args.durability == "safe" else "fast"
        self.selected: tuple[str, ...] = tuple(args.phases)
        self.valkey: ValkeyServer | None = None
        self.postgres: PostgresServer | None = None
        self.redis: redis.Redis | None = None
        self.gateway: Process | None = None
        self.app: Process | None = None
        self.worker: Process | None = None
        self.env: dict[str, str] = {}
        self.flags: list[str] = []  # the gateway's granian options, which the bare and naive apps copy
        self.activities: dict[str, Activity] = {}  # by activity_key(name, run)
        self.naive: list[Activity] = []
        self.idle: list[str] = []  # the idle phase's ended activities (made in its first round)
        self.code = Path(args.code).resolve()  # the checkout the gateway and the worker run from
        self.tokens: TokenFile | None = None
        self.crowd = Path()  # the first --users tokens: the sold-out phase's users who come back
        self.script = Path()  # wrk's Lua script
        self.run = 0  # the round running now (1-based)

    def opt(self, name: str) -> int:
        return int(getattr(self.a, name))

    def runs(self, *names: str) -> bool:
        """Whether any of the named phases was selected."""
        return any(name in self.selected for name in names)

    def say(self, text: str) -> None:
        where = f" run {self.run}/{self.opt('repeat')}" if self.run else ""
        print(f"[{time.monotonic() - self.began:6.1f}s{where}] {text}", file=sys.stderr, flush=True)

    def fail(self, text: str) -> None:
        text = f"run {self.run}: {text}" if self.run else text
        self.results.failures.append(text)
        self.say("FAILED: " + text)

    def record(self, cpu: CpuWatch, phase: Phase) -> Phase:
        """Keep a measured phase, with what other processes used meanwhile."""
        phase.other_seconds = cpu.others(phase.generator_seconds)
        phase.wall_seconds = cpu.seconds
        phase.run = self.run
        self.results.phases.append(phase)
        return phase

    def figure(self, figure: Figure) -> Figure:
        figure.run = self.run
        self.results.figures.append(figure)
        return figure

    def activity(self, name: str) -> Activity:
        """The round's own activity of that name."""
        return self.activities[activity_key(name, self.run)]

    def roots(self, app: Process | None) -> dict[str, int | None]:
        return {
            "app": app.pid if app else None,
            "valkey": self.valkey.pid if self.valkey else None,
            "postgres": self.postgres.pid if self.postgres else None,
            "worker": self.worker.pid if self.worker else None,
        }

    @property
    def vk(self) -> ValkeyServer:
        assert self.valkey is not None
        return self.valkey

    @property
    def pg(self) -> PostgresServer:
        assert self.postgres is not None
        return self.postgres

    @property
    def rd(self) -> redis.Redis:
        assert self.redis is not None
        return self.redis

    @property
    def token_file(self) -> TokenFile:
        assert self.tokens is not None
        return self.tokens

    @property
    def jwt_secret(self) -> str:
        return self.env[PREFIX + "JWT_SECRET"]

    def start_gateway(self, durability: str) -> Process:
        env = {**self.env, PREFIX + "DURABILITY": durability}
        self.say(f"starting the gateway ({self.opt('workers')} granian worker(s), durability {durability})")
        self.gateway = servers.start_gateway(
            env,
            self.opt("workers"),
            self.dir / f"gateway-{durability}-{self.run}.log",
            self.pidfile,
            self.code,
        )
        return self.gateway

    def stop(self, name: str) -> None:
        """Stop the gateway, app or worker this run holds under ``name`` (by its pid), if any."""
        process: Process | None = getattr(self, name)
        if process is not None:
            setattr(self, name, None)
            servers.stop(process, self.pidfile)
