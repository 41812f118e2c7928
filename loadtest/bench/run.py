"""One benchmark run, on servers it starts and stops itself (by pid, on loopback): Valkey and Postgres for the
whole run; the gateway once to create every round's activities; then ``--repeat`` rounds, each running every
selected phase once in this order (so a drift of the machine hits the figures a ratio pairs alike):

1. ``raw``: the ``claim`` script by redis-benchmark on Valkey;
2. on a gateway started for the round (primary setting): a warm-up, ``claim`` (while stock lasts), ``sold_out``
   and ``sold_out_unseen`` (after sell-out), ``open_loop`` (p99 at a share of the round's claim rate);
3. ``bare`` (a raw ASGI app and a litestar app on the gateway's granian command), ``naive`` (the Postgres
   baseline on the same command);
4. ``safe``: with ``--durability both``, the in-stock claim on a gateway started as safe, Valkey on
   ``appendfsync always``;
5. the worker drains the round's claims; ``worker``: a backlog made with no worker, one worker timed on it;
6. ``idle``: a worker and a gateway doing nothing beside ``--idle-activities`` ended activities (made once).

Then the correctness checks over every activity of every round, the ratios against their targets, the report.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import redis

from gateway.devstack.pidfile import free_port, log_tail
from gateway.devstack.postgres import start_postgres, stop_postgres
from gateway.devstack.stack import made_up_settings
from gateway.devstack.valkey import start_valkey, stop_valkey
from gateway.keys import KeySpace
from gateway.settings import PREFIX
from loadtest.bench import describe, servers, wrk
from loadtest.bench.catalog import Admin
from loadtest.bench.checks import check_all
from loadtest.bench.describe import SHED_LAG
from loadtest.bench.gateway_phases import primary_round, safe_round
from loadtest.bench.http_baselines import bare_phases, naive_phase
from loadtest.bench.idle import idle_phase
from loadtest.bench.machine import machine, versions
from loadtest.bench.phases import GATEWAY, PHASES, activity_key, generators, round_activities
from loadtest.bench.procs import machine_busy_seconds
from loadtest.bench.raw_ceiling import raw_ceiling
from loadtest.bench.report import SHARED_CORES, markdown, summary, write
from loadtest.bench.results import Results
from loadtest.bench.servers import ROOT
from loadtest.bench.session import FSYNC, Session
from loadtest.bench.stats import Rates, targets
from loadtest.bench.tokens import TokenFile
from loadtest.bench.worker_phases import SETTLE_SECONDS, backlog_phase, drain

TOKEN_TTL = 6 * 3600
POSTGRES_SETTINGS = (
    "server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_sync_method", "commit_delay",
    "shared_buffers", "wal_buffers", "max_wal_size", "checkpoint_timeout", "max_connections",
)  # fmt: skip
VALKEY_SETTINGS = (
    "appendonly", "appendfsync", "maxmemory", "maxmemory-policy", "auto-aof-rewrite-percentage", "io-threads",
)  # fmt: skip


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        argv = " ".join(sys.argv[1:]) if sys.argv[1:2] == ["benchmark"] else "benchmark"
        results = Results(
            command=f"claimgate {argv}", started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        )
        results.runs = int(args.repeat)
        results.phases_run = list(args.phases)
        results.phases_skipped = [name for name in PHASES if name not in args.phases]
        self.s = Session(args, results)
        self.completed = False  # every round ran: only then does the report replace --out
        self.plan: dict[str, tuple[int, int]] = {}  # each round's activities: name -> (stock, per-user limit)

    def main(self) -> int:
        s = self.s
        try:
            self.setup()
            self.prepare()
            for run in range(1, s.opt("repeat") + 1):
                s.run = run
                self.round()
            s.run = 0
            self.check()
            self.completed = True
        except KeyboardInterrupt:
            s.fail("interrupted")
        except Exception as exc:
            traceback.print_exc()
            s.fail(f"the run stopped: {exc}")
        finally:
            s.run = 0
            self.stop_all()
        return self.finish()

    # -- before the rounds ------------------------------------------------------------------------------------

    def setup(self) -> None:
        s = self.s
        missing = [
            f"{tool} (Debian: apt-get install {pkg})"
            for tool, pkg in generators(s.selected).items()
            if not shutil.which(tool)
        ]
        if missing:
            raise RuntimeError("missing load generators: " + ", ".join(missing))
        s.base.mkdir(parents=True, exist_ok=True)
        ended = s.pidfile.reap_stale()
        if ended:
            s.say(f"stopped {len(ended)} server(s) a killed run left behind: pids {ended}")
        s.dir.mkdir(parents=True, exist_ok=True)
        s.results.machine = machine(s.dir)
        s.results.machine["other processes' CPU at the start"] = self.wait_quiet()
        s.results.versions = versions()
        s.say(f"starting Valkey ({s.primary}: appendfsync {FSYNC[s.primary]}) and Postgres in {s.dir}")
        s.valkey = start_valkey(
            s.dir / "valkey",
            appendonly=True,
            appendfsync=FSYNC[s.primary],
            maxmemory=s.a.valkey_maxmemory,
            pidfile=s.pidfile,
        )
        s.postgres = start_postgres(s.dir / "postgres", durable=True, pidfile=s.pidfile)
        s.redis = redis.Redis(host="127.0.0.1", port=s.vk.port, decode_responses=True)
        s.env = self.environment()
        migrate = [sys.executable, "-m", "claimgate.cli", "migrate"]
        subprocess.run(migrate, env=s.env, cwd=ROOT, check=True, timeout=120, capture_output=True)
        server = s.rd.info("server")
        s.results.versions["valkey server"] = str(server.get("valkey_version") or server.get("redis_version"))
        s.results.postgres = asyncio.run(self.postgres_settings())
        s.results.versions["postgres"] = s.results.postgres.pop("server_version")
        s.tokens = TokenFile(s.dir / "tokens.txt", s.jwt_secret, TOKEN_TTL)
        s.say(f"minting {s.opt('users'):,} user tokens")
        s.tokens.grow_to(s.opt("users"))
        s.crowd = s.tokens.first(s.opt("users"))
        s.script = wrk.write_script(s.dir)

    def environment(self) -> dict[str, str]:
        """The servers' environment: made-up secrets, the run's Valkey and Postgres, lag shedding raised."""
        s = self.s
        env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
        env.update(made_up_settings({}))
        env.update(
            {
                PREFIX + "REDIS_URL": s.vk.url,
                PREFIX + "DATABASE_URL": s.pg.url,
                PREFIX + "DURABILITY": s.primary,
                PREFIX + "SHED_LAG": str(SHED_LAG),
                PREFIX + "OPS_PORT": str(free_port()),
                PREFIX + "WORKER_OPS_PORT": "0",
            }
        )
        return env

    def wait_quiet(self) -> str:
        """Wait (up to --wait-quiet seconds) until other processes use under 0.2 core; what they used last."""
        s = self.s
        deadline = time.monotonic() + s.opt("wait_quiet")
        while True:
            before = machine_busy_seconds()
            time.sleep(1.0)
            busy = machine_busy_seconds() - before
            if busy < SHARED_CORES or time.monotonic() >= deadline:
                break
            s.say(f"other processes use {busy:.2f} cores; waiting for a quiet machine")
        if busy >= SHARED_CORES:
            s.say(f"running anyway: other processes use {busy:.2f} cores (the report says so)")
        return f"{busy:.2f} cores"

    async def postgres_settings(self) -> dict[str, str]:
        conn = await asyncpg.connect(self.s.pg.url)
        try:
            return {name: str(await conn.fetchval(f"SHOW {name}")) for name in POSTGRES_SETTINGS}
        finally:
            await conn.close()

    def prepare(self) -> None:
        """A gateway started once: the granian command the apps copy, and every round's activities."""
        s = self.s
        gateway = s.start_gateway(s.primary)
        s.flags = servers.gateway_flags(gateway)
        api_key = s.env[PREFIX + "API_KEYS"].split(",")[0].split(":", 1)[1]
        admin = Admin(gateway.url, api_key)
        try:
            self.plan = round_activities(s.selected, s.opt("backlog"))
            for run in range(1, s.opt("repeat") + 1):
                for name, (stock, limit) in self.plan.items():
                    key = activity_key(name, run)
                    s.activities[key] = admin.activity(key, stock=stock, per_user_limit=limit)
            for activity in s.activities.values():
                config = KeySpace.activity(activity.id).config
                if not s.rd.exists(config):
                    admin.read(activity.id)  # the gateway repairs a missing mirror on a read
                if not s.rd.exists(config):
                    raise RuntimeError(
                        f"activity {activity.key} was created but is not in Valkey: the gateway cannot run"
                        f" its scripts; its log ends:\n{log_tail(gateway.log)}"
                    )
        finally:
            admin.close()
            s.stop("gateway")
        s.results.valkey = {
            str(k): str(v) for name in VALKEY_SETTINGS for k, v in s.rd.config_get(name).items()
        }

    # -- the rounds -------------------------------------------------------------------------------------------

    def round(self) -> None:
        s = self.s
        s.say(f"round {s.run} of {s.opt('repeat')}: {', '.join(s.selected)}")
        if s.runs("raw"):
            raw_ceiling(s)
        if s.runs(*GATEWAY):
            primary_round(s)
        if s.runs("bare"):
            bare_phases(s)
        if s.runs("naive"):
            naive_phase(s)
        if s.runs("safe"):
            safe_round(s)
        claimed = [s.activity(name) for name in self.plan if s.activity(name).granted is not None]
        if claimed:
            drain(s, claimed)
        if s.runs("worker"):
            backlog_phase(s)
        if s.runs("idle"):
            idle_phase(s)

    def check(self) -> None:
        s = self.s
        claimed = [a for a in s.activities.values() if a.granted is not None]
        checks = asyncio.run(check_all(s.pg.url, s.rd, claimed, s.naive))
        s.results.checks = checks
        for c in checks:
            if not c.ok:
                s.fail(c.problem())
        if s.results.unsettled:
            s.fail(
                f"{s.results.unsettled:,} stream entries neither persisted nor acknowledged by the worker"
                f" {SETTLE_SECONDS} s after the last round's claims were"
            )
        s.say(f"correctness: {sum(c.ok for c in checks)} of {len(checks)} activities add up")

    # -- the end ----------------------------------------------------------------------------------------------

    def stop_all(self) -> None:
        s = self.s
        for name in ("worker", "app", "gateway"):
            try:
                s.stop(name)
            except Exception as exc:
                s.say(f"could not stop {name}: {exc!r}")
        if s.redis is not None:
            s.redis.close()
        if s.postgres is not None:
            stop_postgres(s.postgres, s.pidfile)
            s.postgres = None
        if s.valkey is not None:
            stop_valkey(s.valkey, s.pidfile)
            s.valkey = None
        s.say("stopped every server this run started")

    def rates(self) -> list[Rates]:
        """Each round's figures that the targets compare."""
        r, claim = self.s.results, f"claim_{self.s.primary}"
        return [
            Rates(
                claim=r.value(claim, run),
                sold_out=r.value("sold_out", run),
                bare=r.value("bare", run),
                naive=r.value("naive", run),
                worker=r.value("worker", run),
                p99_at_80=r.value("open_loop_p99", run),
                idle_worker=r.value("idle_worker", run),
                idle_gateway=r.value("idle_gateway", run),
            )
            for run in range(1, r.runs + 1)
        ]

    def bound_notes(self) -> dict[str, str]:
        """The targets involving a figure that some run measured generator-bound."""
        bound = {f.key for f in self.s.results.figures if f.generator_bound}
        claim, notes = f"claim_{self.s.primary}", {}
        if claim in bound or "bare" in bound:
            notes["claim_bare"] = "generator-bound figure involved"
        if "sold_out" in bound or "bare" in bound:
            notes["sold_out_bare"] = "generator-bound figure involved"
        if claim in bound:
            notes["naive"] = "generator-bound figure involved"
        if "open_loop_p99" in bound:
            notes["p99"] = "generator-bound"
        return notes

    def finish(self) -> int:
        s, r = self.s, self.s.results
        r.wall_seconds = time.monotonic() - s.began
        r.targets = targets(self.rates(), self.bound_notes())
        r.settings = describe.settings(s.a, s.flags, s.tokens.count if s.tokens else 0)
        r.notes = describe.notes(s.a.durability)
        out = Path(s.a.out) if self.completed else s.dir / "benchmark"
        if not self.completed:
            s.say(f"the run did not finish: its partial report goes to {out}.md, not to {s.a.out}.md")
        try:
            md, js = write(r, out)
            s.say(f"wrote {md} and {js}")
        except OSError as exc:
            print(markdown(r))
            s.say(f"could not write the report: {exc!r}")
        print(summary(r), flush=True)
        if r.failures or s.a.keep or not self.completed:
            s.say(f"kept the run's data and logs in {s.dir}")
        else:
            shutil.rmtree(s.dir, ignore_errors=True)
        return 1 if r.failures else 0
