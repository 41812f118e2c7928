"""The phases of one benchmark run, in order, on servers it starts and stops itself (by pid, on loopback).

1. raw ceiling: the ``claim`` script by redis-benchmark on Valkey;
2. the gateway: a warm-up (which sizes the token file), the claim route while stock lasts, after sell-out, and
   the open-loop p99 at a share of the peak; then, with ``--durability both``, the in-stock claim again on the
   safe setting (Valkey switched to ``appendfsync always``, the gateway restarted with ``CLAIMGATE_DURABILITY=safe``);
3. the bare HTTP ceiling: a raw ASGI app and a litestar app on the gateway's own granian command;
4. the naive baseline on the same command, against the same Postgres;
5. the worker drains the load phases' claims; then, with no worker, a backlog of claims is made (Redis bytes per
   coupon read around it) and one worker is timed draining it;
6. the correctness checks over every activity, the ratios against their targets, the report.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import redis

from gateway.devstack.pidfile import PidFile, free_port, log_tail
from gateway.devstack.postgres import PostgresServer, start_postgres, stop_postgres
from gateway.devstack.stack import made_up_settings
from gateway.devstack.valkey import ValkeyServer, start_valkey, stop_valkey
from gateway.ids import new_id
from gateway.keys import KeySpace
from gateway.scripts.fence import Fence
from gateway.scripts.registry import load_scripts
from gateway.scripts.runner import ScriptRunner, connect
from gateway.settings import PREFIX
from gateway.tokens import TOKEN_CACHE_ENTRIES as TOKEN_CACHE
from gateway.tokens import mint_user_token
from loadtest.bench import describe, h2load, naive, redisbench, servers, wrk
from loadtest.bench.backlog import claims_rows, make_backlog, time_drain, used_memory
from loadtest.bench.catalog import Activity, Admin
from loadtest.bench.checks import check_all, redis_state, wait_drained, wait_settled
from loadtest.bench.describe import SHED_LAG
from loadtest.bench.machine import machine, versions
from loadtest.bench.procs import CpuWatch, RssSampler, machine_busy_seconds, run_generator
from loadtest.bench.report import SHARED_CORES, Figure, Phase, Results, markdown, summary, write
from loadtest.bench.servers import CLAIM_PATH, ROOT, Process
from loadtest.bench.stats import Rates, targets
from loadtest.bench.tokens import TokenFile
from loadtest.direct_claims import put_activity

FSYNC = {"fast": "everysec", "safe": "always"}
IN_STOCK = 10_000_000  # never runs out within a phase
IDEMPOTENCY_TTL = 90_000
TOKEN_MARGIN = 1.5  # tokens minted over the warm-up's rate x the phase's seconds
TOKEN_TTL = 6 * 3600
SETTLE_SECONDS = 60  # for the worker to acknowledge the last deliveries once every claim is persisted
BACKLOG_PROCESSES = 2
BACKLOG_CONCURRENCY = 64
POSTGRES_SETTINGS = (
    "server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_sync_method", "commit_delay",
    "shared_buffers", "wal_buffers", "max_wal_size", "checkpoint_timeout", "max_connections",
)  # fmt: skip
VALKEY_SETTINGS = (
    "appendonly", "appendfsync", "maxmemory", "maxmemory-policy", "auto-aof-rewrite-percentage", "io-threads",
)  # fmt: skip
TOOLS = {"wrk": "wrk", "h2load": "nghttp2-client", "redis-benchmark": "redis-tools"}


def cache_note(users: int) -> str:
    """What the gateway's verified-token cache does for a phase rotating over ``users`` tokens."""
    if users <= TOKEN_CACHE:
        return f" (the verified-token cache holds {TOKEN_CACHE:,}: after the first pass each token is a hit)"
    return f" (more than the verified-token cache holds, {TOKEN_CACHE:,}: each request verifies its token)"


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.began = time.monotonic()
        self.base = Path(self.a.workdir).resolve()
        self.dir = self.base / f"run-{os.getpid()}"
        self.pidfile = PidFile(self.base / "pids.json")
        self.primary = "safe" if self.a.durability == "safe" else "fast"
        self.valkey: ValkeyServer | None = None
        self.postgres: PostgresServer | None = None
        self.gateway: Process | None = None
        self.app: Process | None = None
        self.worker: Process | None = None
        self.redis: redis.Redis | None = None
        self.env: dict[str, str] = {}
        self.flags: list[str] = []
        self.activities: dict[str, Activity] = {}
        self.naive: list[Activity] = []
        self.completed = False  # every phase ran: only then does the report replace --out
        argv = " ".join(sys.argv[1:]) if sys.argv[1:2] == ["benchmark"] else "benchmark"
        self.results = Results(
            command=f"claimgate {argv}", started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        )

    # -- plumbing ---------------------------------------------------------------------------------------------

    def opt(self, name: str) -> int:
        return int(getattr(self.a, name))

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.began:6.1f}s] {text}", file=sys.stderr, flush=True)

    def fail(self, text: str) -> None:
        self.results.failures.append(text)
        self.say("FAILED: " + text)

    def record(self, cpu: CpuWatch, phase: Phase) -> Phase:
        """Keep a measured phase, with what other processes used meanwhile."""
        phase.other_seconds = cpu.others(phase.generator_seconds)
        phase.wall_seconds = cpu.seconds
        self.results.phases.append(phase)
        return phase

    def figure(self, figure: Figure) -> None:
        self.results.figures.append(figure)

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

    # -- the run ----------------------------------------------------------------------------------------------

    def main(self) -> int:
        try:
            self.setup()
            self.raw_ceiling()
            self.gateway_phases()
            if self.a.durability == "both":
                self.safe_phase()
            self.stop_gateway()
            self.bare_phases()
            self.naive_phase()
            self.drain()
            self.backlog_phase()
            self.check()
            self.completed = True
        except KeyboardInterrupt:
            self.fail("interrupted")
        except Exception as exc:
            traceback.print_exc()
            self.fail(f"the run stopped: {exc}")
        finally:
            self.stop_all()
        return self.finish()

    def setup(self) -> None:
        missing = [
            f"{tool} (Debian: apt-get install {package})"
            for tool, package in TOOLS.items()
            if shutil.which(tool) is None
        ]
        if missing:
            raise RuntimeError("missing load generators: " + ", ".join(missing))
        self.base.mkdir(parents=True, exist_ok=True)
        ended = self.pidfile.reap_stale()
        if ended:
            self.say(f"stopped {len(ended)} server(s) a killed run left behind: pids {ended}")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.results.machine = machine(self.dir)
        self.results.machine["other processes' CPU at the start"] = self.wait_quiet()
        self.results.versions = versions()
        self.say(
            f"starting Valkey ({self.primary}: appendfsync {FSYNC[self.primary]}) and Postgres in {self.dir}"
        )
        self.valkey = start_valkey(
            self.dir / "valkey",
            appendonly=True,
            appendfsync=FSYNC[self.primary],
            maxmemory=self.a.valkey_maxmemory,
            pidfile=self.pidfile,
        )
        self.postgres = start_postgres(self.dir / "postgres", durable=True, pidfile=self.pidfile)
        self.redis = redis.Redis(host="127.0.0.1", port=self.vk.port, decode_responses=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
        env.update(made_up_settings({}))
        env.update(
            {
                PREFIX + "REDIS_URL": self.vk.url,
                PREFIX + "DATABASE_URL": self.pg.url,
                PREFIX + "DURABILITY": self.primary,
                PREFIX + "SHED_LAG": str(SHED_LAG),
                PREFIX + "OPS_PORT": str(free_port()),
                PREFIX + "WORKER_OPS_PORT": "0",
            }
        )
        self.env = env
        subprocess.run(
            [sys.executable, "-m", "claimgate.cli", "migrate"],
            env=env,
            cwd=ROOT,
            check=True,
            timeout=120,
            capture_output=True,
        )
        server = self.rd.info("server")
        self.results.versions["valkey server"] = str(
            server.get("valkey_version") or server.get("redis_version")
        )
        self.results.postgres = asyncio.run(self.postgres_settings())
        self.results.versions["postgres"] = self.results.postgres.pop("server_version")
        self.tokens = TokenFile(self.dir / "tokens.txt", env[PREFIX + "JWT_SECRET"], TOKEN_TTL)
        self.say(f"minting {self.opt('users'):,} user tokens")
        self.tokens.grow_to(self.opt("users"))
        self.script = wrk.write_script(self.dir)

    def wait_quiet(self) -> str:
        """Wait (up to --wait-quiet seconds) until other processes use under 0.2 core; what they used last."""
        deadline = time.monotonic() + self.opt("wait_quiet")
        while True:
            before = machine_busy_seconds()
            time.sleep(1.0)
            busy = machine_busy_seconds() - before
            if busy < SHARED_CORES or time.monotonic() >= deadline:
                break
            self.say(f"other processes use {busy:.2f} cores; waiting for a quiet machine")
        if busy >= SHARED_CORES:
            self.say(f"running anyway: other processes use {busy:.2f} cores (the report says so)")
        return f"{busy:.2f} cores"

    async def postgres_settings(self) -> dict[str, str]:
        conn = await asyncpg.connect(self.pg.url)
        try:
            return {name: str(await conn.fetchval(f"SHOW {name}")) for name in POSTGRES_SETTINGS}
        finally:
            await conn.close()

    def valkey_settings(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for name in VALKEY_SETTINGS:
            found.update({str(k): str(v) for k, v in self.rd.config_get(name).items()})
        return found

    # -- 1. raw ceiling ---------------------------------------------------------------------------------------

    async def mirror_raw(self, activity_id: str, stock: int) -> str:
        client = await connect(self.vk.url, max_connections=4)
        try:
            runner = ScriptRunner(client, load_scripts(), Fence(open_=True), max_in_flight=4)
            await runner.load_all()
            await put_activity(runner, activity_id, stock)
            return runner.scripts["claim"].sha
        finally:
            await client.aclose()

    def raw_ceiling(self) -> None:
        calls = self.opt("raw_calls")
        activity_id = "raw" + new_id()
        sha = asyncio.run(self.mirror_raw(activity_id, calls + 1000))
        call = redisbench.claim_call(activity_id, sha, redisbench.now(), IDEMPOTENCY_TTL)
        command = redisbench.command(
            self.vk.port,
            call,
            calls=calls,
            clients=self.opt("raw_clients"),
            pipeline=self.opt("raw_pipeline"),
        )
        self.say(f"raw ceiling: {calls:,} claim script calls by redis-benchmark")
        with CpuWatch({"valkey": self.vk.pid}) as cpu:
            ran = run_generator(command, 300, self.dir)
        if ran.returncode != 0:
            raise RuntimeError(f"redis-benchmark exited with {ran.returncode}: {ran.stderr[-1000:]}")
        rate, p50, p99 = redisbench.parse_csv(ran.stdout)
        taken, _ = redis_state(self.rd, activity_id)
        seconds = calls / rate
        bound = ran.cpu_seconds / seconds >= 0.9
        self.record(
            cpu,
            Phase(
                "raw",
                "raw claim script (redis-benchmark)",
                seconds,
                cpu.used,
                "redis-benchmark",
                1,
                ran.cpu_seconds,
                bound,
            ),
        )
        if taken < 0.99 * calls:
            self.fail(
                f"raw ceiling: only {taken} of {calls} claim calls granted (errors? see redis-benchmark)"
            )
        self.figure(
            Figure(
                "raw_claim_script",
                "raw ceiling: `claim` script on Valkey",
                rate,
                "calls/s",
                f"redis-benchmark EVALSHA, {self.opt('raw_clients')} connections x {self.opt('raw_pipeline')}"
                f" pipelined; {calls:,} calls, {taken:,} granted (the rest drew a user twice: limit_reached);"
                f" p50 {p50:.2f} ms, p99 {p99:.2f} ms per pipelined batch; Valkey"
                f" {cpu.used['valkey'] / seconds:.2f} cores",
                bound,
            )
        )
        self.say(f"raw ceiling: {rate:,.0f} claim calls/s ({taken:,} granted)")
        keys = KeySpace.activity(activity_id)
        self.rd.delete(
            keys.config, keys.user_counts, keys.device_counts, keys.allow_list, keys.seq, keys.events
        )

    # -- HTTP phases ------------------------------------------------------------------------------------------

    def http_phase(
        self,
        key: str,
        label: str,
        server: Process,
        activity_id: str,
        seconds: int,
        *,
        expect: set[str],
        marker: str = "",
        measured: bool = True,
        rss: bool = False,
        one_token_each: bool = True,
        tokens: Path | None = None,
    ) -> wrk.WrkResult:
        """One wrk run; a measured one is recorded with its CPU. Anything unexpected fails the run."""
        threads = self.opt("threads")
        command = wrk.command(
            server.url,
            CLAIM_PATH.format(activity_id=activity_id),
            script=self.script,
            tokens=tokens or self.tokens.path,
            threads=threads,
            connections=self.opt("connections"),
            seconds=seconds,
            grace=self.opt("grace"),
            marker=marker,
        )
        sampler = RssSampler(server.pid) if rss else None
        with CpuWatch(self.roots(server)) as cpu:
            if sampler is not None:
                sampler.__enter__()
            try:
                ran = run_generator(command, seconds + self.opt("grace") + 120, self.dir)
            finally:
                if sampler is not None:
                    sampler.__exit__()
        if ran.returncode != 0:
            raise RuntimeError(f"{label}: wrk exited with {ran.returncode}: {ran.stderr[-2000:]}")
        result = wrk.parse(ran.stdout)
        bound = result.seconds > 0 and ran.cpu_seconds / result.seconds >= 0.9 * threads
        if measured:
            self.record(
                cpu,
                Phase(
                    key,
                    label,
                    result.seconds,
                    cpu.used,
                    "wrk",
                    threads,
                    ran.cpu_seconds,
                    bool(bound),
                    sampler.max_bytes if sampler else 0,
                    sampler.max_processes if sampler else 0,
                ),
            )
        problems = []
        unexpected = {status: n for status, n in result.statuses.items() if status not in expect}
        if unexpected:
            problems.append(f"{label}: unexpected statuses {unexpected} (expected only {sorted(expect)})")
        if result.unanswered:
            problems.append(f"{label}: {result.unanswered} requests still unanswered when wrk stopped")
        if result.socket_errors:
            problems.append(f"{label}: socket errors {result.errors}")
        if one_token_each and result.tokens_reused:
            problems.append(
                f"{label}: a token was used twice ({result.sent:,} requests, {result.tokens:,} tokens)"
            )
        if problems and not measured:  # a warm-up: the server is not working, measuring it would say nothing
            raise RuntimeError("; ".join(problems) + f"; {server.name}'s log ends:\n{log_tail(server.log)}")
        for problem in problems:
            self.fail(problem)
        lat = result.latency_ms
        self.say(
            f"{label}: {result.rate:,.0f} req/s; p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms,"
            f" p99.9 {lat['p999']:.2f} ms; statuses {result.statuses}"
            + (f"; wrk {ran.cpu_seconds / result.seconds:.2f} cores: generator-bound" if bound else "")
        )
        return result

    def http_figure(self, key: str, label: str, result: wrk.WrkResult, extra: str = "") -> Figure:
        phase = self.results.phases[-1]
        lat = result.latency_ms
        statuses = ", ".join(f"{status}: {n:,}" for status, n in result.statuses.items())
        detail = (
            f"p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, p99.9 {lat['p999']:.2f} ms, max {lat['max']:.1f} ms;"
            f" {result.requests:,} answers in {result.seconds:.2f} s ({statuses}){extra}"
        )
        figure = Figure(key, label, result.rate, "req/s", detail, phase.generator_bound)
        self.figure(figure)
        return figure

    def ensure_tokens(self, rate: float) -> None:
        """Enough tokens that no token is used twice in a phase of ``--duration`` at ``rate`` (with a margin)."""
        needed = math.ceil(rate * self.opt("duration") * TOKEN_MARGIN) + self.opt("connections")
        if needed > self.tokens.count:
            self.say(f"minting {needed - self.tokens.count:,} more tokens ({needed:,} in all)")
            self.tokens.grow_to(needed)

    def start_gateway(self, durability: str) -> Process:
        env = {**self.env, PREFIX + "DURABILITY": durability}
        self.say(f"starting the gateway ({self.opt('workers')} granian worker(s), durability {durability})")
        return servers.start_gateway(
            env, self.opt("workers"), self.dir / f"gateway-{durability}.log", self.pidfile
        )

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            servers.stop(self.gateway, self.pidfile)
            self.gateway = None

    def gateway_phases(self) -> None:
        self.gateway = self.start_gateway(self.primary)
        self.flags = servers.gateway_flags(self.gateway)
        api_key = self.env[PREFIX + "API_KEYS"].split(",")[0].split(":", 1)[1]
        admin = Admin(self.gateway.url, api_key)
        try:
            plan = {
                "warm": (IN_STOCK, 1),
                "claim": (IN_STOCK, 1),
                "sold_out": (0, 1),
                "open_loop": (IN_STOCK, 1_000_000),
                "backlog": (self.opt("backlog"), 1),
            }
            if self.a.durability == "both":
                plan.update({"warm_safe": (IN_STOCK, 1), "claim_safe": (IN_STOCK, 1)})
            for key, (stock, limit) in plan.items():
                self.activities[key] = admin.activity(key, stock=stock, per_user_limit=limit)
            for activity in self.activities.values():
                if not self.rd.exists(KeySpace.activity(activity.id).config):
                    admin.read(activity.id)  # the gateway repairs a missing mirror on a read
                if not self.rd.exists(KeySpace.activity(activity.id).config):
                    raise RuntimeError(
                        f"activity {activity.key} was created but is not in Valkey: the gateway cannot run"
                        f" its scripts; its log ends:\n{log_tail(self.gateway.log)}"
                    )
        finally:
            admin.close()
        self.results.valkey = self.valkey_settings()
        claim = self.warm_then_claim("warm", "claim", f"claim_{self.primary}", self.primary, rss=True)
        self.http_figure(f"claim_{self.primary}", f"claim route while stock lasts ({self.primary})", claim)
        phase = self.results.phases[-1]
        self.figure(
            Figure(
                "gateway_rss",
                "gateway RSS under load (max, all granian processes)",
                phase.rss_max_bytes / 2**20,
                "MiB",
                f"sum of VmRSS over {phase.rss_processes} processes (granian parent + {self.opt('workers')}"
                " worker(s)), sampled every 0.2 s during the in-stock claim phase",
            )
        )
        crowd = self.opt("users")
        sold = self.sold_out_phase("sold_out", "claim route, sold out", self.tokens.first(crowd))
        self.http_figure(
            "sold_out",
            f"claim route after sell-out ({self.primary})",
            sold,
            f"; every 409 is sold_out; tokens rotating over {crowd:,} users, who come back"
            + cache_note(crowd),
        )
        unseen = self.sold_out_phase(
            "sold_out_unseen", "claim route, sold out, every token new to the cache", self.tokens.path
        )
        self.activities["sold_out"].granted = sold.statuses.get("201", 0) + unseen.statuses.get("201", 0)
        self.http_figure(
            "sold_out_unseen",
            f"claim route after sell-out, every token new to the cache (informative, {self.primary})",
            unseen,
            f"; tokens rotating over all {self.tokens.count:,} users minted" + cache_note(self.tokens.count),
        )
        self.open_loop(claim.rate)

    def sold_out_phase(self, key: str, label: str, tokens: Path) -> wrk.WrkResult:
        assert self.gateway is not None
        return self.http_phase(
            key,
            label,
            self.gateway,
            self.activities["sold_out"].id,
            self.opt("duration"),
            expect={"409"},
            marker="sold_out",
            one_token_each=False,
            tokens=tokens,
        )

    def open_loop(self, peak: float) -> None:
        assert self.gateway is not None
        share = float(self.a.open_loop_share)
        rate, connections, seconds = share * peak, self.opt("connections"), self.opt("duration")
        activity = self.activities["open_loop"]
        token = mint_user_token(
            self.env[PREFIX + "JWT_SECRET"], "bench-open-loop", "bench-open-loop-d", ttl_seconds=TOKEN_TTL
        )
        log = self.dir / "h2load.log"
        log.unlink(missing_ok=True)  # h2load appends
        url = self.gateway.url + CLAIM_PATH.format(activity_id=activity.id)
        command = h2load.command(
            url, token, connections=connections, rate=rate, seconds=seconds, log_file=log
        )
        self.say(
            f"open loop: {rate:,.0f} req/s offered ({share:.0%} of {peak:,.0f}) for {seconds} s by h2load"
        )
        with CpuWatch(self.roots(self.gateway)) as cpu:
            ran = run_generator(command, seconds * 4 + 60, self.dir)
        if ran.returncode != 0:
            raise RuntimeError(
                f"h2load exited with {ran.returncode}: {ran.stdout[-1000:]} {ran.stderr[-1000:]}"
            )
        result = h2load.parse(log.read_text(), ran.stdout, rate)
        bound = result.seconds > 0 and ran.cpu_seconds / result.seconds >= 0.9
        self.record(
            cpu,
            Phase(
                "open_loop",
                f"open loop at {share:.0%} of peak",
                result.seconds,
                cpu.used,
                "h2load",
                1,
                ran.cpu_seconds,
                bool(bound),
            ),
        )
        activity.granted = result.statuses.get("201", 0)
        unexpected = {s: n for s, n in result.statuses.items() if s != "201"}
        if unexpected:
            self.fail(f"open loop: unexpected statuses {unexpected}")
        sent = int(command[[c.startswith("-n") for c in command].index(True)][2:])
        if result.requests != sent:
            self.fail(
                f"open loop: {sent - result.requests} of {sent} requests not answered ({result.finished_line})"
            )
        lat = result.latency_ms
        self.figure(
            Figure(
                "open_loop_p99",
                f"p99 at {share:.0%} of the peak claim rate (open loop)",
                lat["p99"],
                "ms",
                f"h2load --h1 -c {connections} --rps {rate / connections:.1f} (x {connections} ="
                f" {rate:,.0f} req/s offered), achieved {result.achieved_rate:,.0f} req/s; p50 {lat['p50']:.2f} ms,"
                f" p99.9 {lat['p999']:.2f} ms, max {lat['max']:.1f} ms; {result.requests:,} answers"
                f" ({', '.join(f'{s}: {n:,}' for s, n in result.statuses.items())}); one user, per_user_limit 10^6",
                bool(bound),
            )
        )
        self.say(
            f"open loop: achieved {result.achieved_rate:,.0f} of {rate:,.0f} req/s; p50 {lat['p50']:.2f} ms,"
            f" p99 {lat['p99']:.2f} ms, p99.9 {lat['p999']:.2f} ms"
        )

    def warm_then_claim(
        self, warm: str, claim: str, phase: str, setting: str, *, rss: bool = False
    ) -> wrk.WrkResult:
        """A warm-up on its own activity, then the measured in-stock claim phase on another (every answer 201)."""
        assert self.gateway is not None
        warmed = self.http_phase(
            warm,
            f"warm-up (claim route, {setting})",
            self.gateway,
            self.activities[warm].id,
            max(2, self.opt("warmup")),
            expect={"201", "409"},
            measured=False,
            one_token_each=False,
        )
        self.activities[warm].granted = warmed.statuses.get("201", 0)
        self.ensure_tokens(warmed.rate)
        result = self.http_phase(
            phase,
            f"claim route, in stock ({setting})",
            self.gateway,
            self.activities[claim].id,
            self.opt("duration"),
            expect={"201"},
            rss=rss,
        )
        self.activities[claim].granted = result.statuses.get("201", 0)
        return result

    def safe_phase(self) -> None:
        self.say("switching Valkey to appendfsync always (CONFIG SET) and restarting the gateway as safe")
        self.stop_gateway()
        self.rd.config_set("appendfsync", "always")
        try:
            self.gateway = self.start_gateway("safe")
            ops = f"http://127.0.0.1:{self.env[PREFIX + 'OPS_PORT']}"
            durability = httpx.get(ops + "/readyz", timeout=5).json().get("durability", {})
            if durability.get("setting") != "safe" or durability.get("problem"):
                self.fail(f"safe setting: the gateway reports {durability}")
            claim = self.warm_then_claim("warm_safe", "claim_safe", "claim_safe", "safe")
            self.http_figure(
                "claim_safe",
                "claim route while stock lasts (safe)",
                claim,
                f"; Redis reported: {durability.get('redis', '?')}",
            )
        finally:
            self.stop_gateway()
            self.rd.config_set("appendfsync", FSYNC[self.primary])

    # -- bare and naive ---------------------------------------------------------------------------------------

    def bare_phases(self) -> None:
        rates: list[float] = []
        for key, label, target in (
            ("bare_asgi", "bare HTTP: raw ASGI app", "loadtest.bench.apps:raw_app"),
            ("bare_litestar", "bare HTTP: litestar, one route", "loadtest.bench.apps:litestar_app"),
        ):
            self.say(f"starting {label} on the gateway's granian command: {' '.join(self.flags)}")
            self.app = servers.start_app(
                key, target, self.flags, self.env, self.dir / f"{key}.log", self.pidfile
            )
            try:
                self.http_phase(
                    key,
                    f"warm-up ({label})",
                    self.app,
                    "bare",
                    max(1, self.opt("warmup")),
                    expect={"201"},
                    measured=False,
                    one_token_each=False,
                )
                result = self.http_phase(
                    key, label, self.app, "bare", self.opt("duration"), expect={"201"}, one_token_each=False
                )
                self.http_figure(key, label, result)
                rates.append(result.rate)
            finally:
                servers.stop(self.app, self.pidfile)
                self.app = None
        best = max(rates)
        faster = [
            f for f in self.results.figures if f.key in ("bare_asgi", "bare_litestar") and f.value == best
        ]
        self.figure(
            Figure(
                "bare",
                "bare HTTP ceiling (the faster of the two)",
                best,
                "req/s",
                faster[0].label,
                faster[0].generator_bound,
            )
        )

    def naive_phase(self) -> None:
        suffix = new_id()
        warm = Activity("naive_warm", f"naive-warm-{suffix}", IN_STOCK, 1, redis=False)
        claim = Activity("naive_claim", f"naive-claim-{suffix}", IN_STOCK, 1, redis=False)
        self.naive = [warm, claim]

        async def prepare() -> None:
            conn = await asyncpg.connect(self.pg.url)
            try:
                await naive.prepare(conn, {warm.id: warm.stock, claim.id: claim.stock})
            finally:
                await conn.close()

        asyncio.run(prepare())
        env = {**self.env, naive.POOL_ENV: str(self.opt("naive_pool"))}
        self.say("starting the naive baseline (litestar + asyncpg, one transaction per claim)")
        self.app = servers.start_app(
            "naive", "loadtest.bench.naive:naive_app", self.flags, env, self.dir / "naive.log", self.pidfile
        )
        try:
            result = self.http_phase(
                "naive_warm",
                "warm-up (naive)",
                self.app,
                warm.id,
                max(1, self.opt("warmup")),
                expect={"201", "409"},
                measured=False,
                one_token_each=False,
            )
            warm.granted = result.statuses.get("201", 0)
            result = self.http_phase(
                "naive", "naive baseline, in stock", self.app, claim.id, self.opt("duration"), expect={"201"}
            )
            claim.granted = result.statuses.get("201", 0)
            self.http_figure(
                "naive",
                "naive baseline (Postgres UPDATE + INSERT per claim)",
                result,
                f"; asyncpg pool {self.opt('naive_pool')} per worker",
            )
        finally:
            servers.stop(self.app, self.pidfile)
            self.app = None

    # -- the worker -------------------------------------------------------------------------------------------

    def claimed(self) -> list[Activity]:
        return [a for a in self.activities.values() if a.granted is not None]

    def drain(self) -> None:
        expected = {a.id: redis_state(self.rd, a.id)[0] for a in self.claimed()}
        total = sum(expected.values())
        self.say(f"the worker drains the load phases' {total:,} claims into Postgres")
        self.worker = servers.start_worker(self.env, self.dir / "worker-drain.log", self.pidfile)
        try:
            with CpuWatch(self.roots(None)) as cpu:
                rows = asyncio.run(wait_drained(self.pg.url, expected, float(self.opt("drain_timeout"))))
            left = wait_settled(self.rd, SETTLE_SECONDS)  # deliveries too: the backlog's worker starts clean
        finally:
            servers.stop(self.worker, self.pidfile)
            self.worker = None
        if left:
            self.say(
                f"{left:,} stream entries still unacknowledged {SETTLE_SECONDS} s after the claims drained"
            )
        short = {a: n - rows[a] for a, n in expected.items() if rows[a] < n}
        if short:
            self.fail(
                f"the worker had not persisted every claim within {self.opt('drain_timeout')} s: {short}"
            )
        self.record(
            cpu, Phase("drain", "worker drains the load phases", cpu.seconds, cpu.used, "none", 0, 0.0, False)
        )
        self.figure(
            Figure(
                "worker_drain_load",
                "worker draining the load phases' claims (informative)",
                total / cpu.seconds,
                "claims/s",
                f"{total:,} claims of {len(expected)} activities in {cpu.seconds:.1f} s, worker start-up included",
            )
        )
        self.say(f"drained {total:,} claims in {cpu.seconds:.1f} s")

    def backlog_phase(self) -> None:
        activity = self.activities["backlog"]
        count = self.opt("backlog")
        before = used_memory(self.rd.info("memory"))
        self.say(
            f"backlog: {count:,} claims through ClaimService (claim + deliver scripts), no worker running"
        )
        seconds = asyncio.run(
            make_backlog(self.vk.url, activity.id, count, BACKLOG_PROCESSES, BACKLOG_CONCURRENCY)
        )
        activity.granted = count
        after = used_memory(self.rd.info("memory"))
        self.figure(
            Figure(
                "redis_bytes_per_coupon",
                "Redis memory per issued coupon",
                (after - before) / count,
                "bytes",
                f"INFO used_memory {before / 2**20:,.1f} MiB before, {after / 2**20:,.1f} MiB after {count:,}"
                " claims (one coupon each) with no worker running: the claim's and the delivery's stream entries"
                " (not yet trimmed: the worker trims only what it persisted), the coupon in its wallet bucket, the"
                " user's wallet index entry, the user and device counters",
            )
        )
        self.figure(
            Figure(
                "backlog_rate",
                "backlog made through ClaimService, no HTTP (informative)",
                count / seconds,
                "claims/s",
                f"{BACKLOG_PROCESSES} client processes x {BACKLOG_CONCURRENCY} in flight",
            )
        )
        self.say(
            f"backlog made in {seconds:.1f} s; {(after - before) / count:,.0f} bytes of Redis per coupon"
        )
        existing = asyncio.run(claims_rows(self.pg.url))
        self.say(f"starting one worker on the backlog (the claims table holds {existing:,} rows already)")
        began = time.monotonic()
        self.worker = servers.start_worker(self.env, self.dir / "worker-backlog.log", self.pidfile)
        try:
            with CpuWatch(self.roots(None)) as cpu:
                rows, first, done = asyncio.run(
                    time_drain(self.pg.url, activity.id, count, float(self.opt("drain_timeout")))
                )
            self.say("waiting for the worker to acknowledge every stream entry")
            self.results.unsettled = wait_settled(self.rd, SETTLE_SECONDS)
        finally:
            servers.stop(self.worker, self.pidfile)
            self.worker = None
        if self.results.unsettled:
            self.fail(
                f"{self.results.unsettled:,} stream entries neither persisted nor acknowledged by the worker"
                f" {SETTLE_SECONDS} s after the backlog's claims were"
            )
        if rows < count:
            self.fail(
                f"worker: {rows:,} of {count:,} backlog claims persisted within {self.opt('drain_timeout')} s"
            )
        total = done - began
        self.record(
            cpu, Phase("worker", "worker alone drains the backlog", total, cpu.used, "none", 0, 0.0, False)
        )
        after_first = (
            f"; {rows / (done - first):,.0f} claims/s from the first row" if first and done > first else ""
        )
        self.figure(
            Figure(
                "worker",
                "worker alone draining a backlog",
                rows / total,
                "claims/s",
                f"{rows:,} claims rows in {total:,.2f} s from the worker's start (one `claimgate worker`;"
                f" {(first or began) - began:.2f} s until the first row{after_first}); the claims table held"
                f" {existing:,} rows of the load phases before (the worker's ledger checks read it); polled"
                " every 0.2 s with count(*)",
            )
        )
        self.say(f"worker: {rows:,} claims in {total:.1f} s = {rows / total:,.0f} claims/s")

    def check(self) -> None:
        checks = asyncio.run(check_all(self.pg.url, self.rd, self.claimed(), self.naive))
        self.results.checks = checks
        for c in checks:
            if not c.ok:
                self.fail(c.problem())
        self.say(f"correctness: {sum(c.ok for c in checks)} of {len(checks)} activities add up")

    # -- the end ----------------------------------------------------------------------------------------------

    def stop_all(self) -> None:
        for name in ("worker", "app", "gateway"):
            process = getattr(self, name)
            if process is not None:
                try:
                    servers.stop(process, self.pidfile)
                except Exception as exc:
                    self.say(f"could not stop {name}: {exc!r}")
                setattr(self, name, None)
        if self.redis is not None:
            self.redis.close()
        if self.postgres is not None:
            stop_postgres(self.postgres, self.pidfile)
            self.postgres = None
        if self.valkey is not None:
            stop_valkey(self.valkey, self.pidfile)
            self.valkey = None
        self.say("stopped every server this run started")

    def value(self, key: str) -> float | None:
        figure = self.results.figure(key)
        return figure.value if figure else None

    def finish(self) -> int:
        r = self.results
        r.wall_seconds = time.monotonic() - self.began
        claim_key = f"claim_{self.primary}"
        bound = {f.key for f in r.figures if f.generator_bound}
        notes: dict[str, str] = {}
        if claim_key in bound or "bare" in bound:
            notes["claim_bare"] = "generator-bound figure involved"
        if "sold_out" in bound or "bare" in bound:
            notes["sold_out_bare"] = "generator-bound figure involved"
        if claim_key in bound:
            notes["naive"] = "generator-bound figure involved"
        if "open_loop_p99" in bound:
            notes["p99"] = "generator-bound"
        r.targets = targets(
            Rates(
                claim=self.value(claim_key),
                sold_out=self.value("sold_out"),
                bare=self.value("bare"),
                naive=self.value("naive"),
                worker=self.value("worker"),
                p99_at_80=self.value("open_loop_p99"),
            ),
            notes,
        )
        r.settings = describe.settings(
            self.a, self.flags, self.tokens.count if hasattr(self, "tokens") else 0
        )
        r.notes = describe.notes(self.a.durability)
        out = Path(self.a.out) if self.completed else self.dir / "benchmark"
        if not self.completed:
            self.say(f"the run did not finish: its partial report goes to {out}.md, not to {self.a.out}.md")
        try:
            md, js = write(r, out)
            self.say(f"wrote {md} and {js}")
        except OSError as exc:
            print(markdown(r))
            self.say(f"could not write the report: {exc!r}")
        print(summary(r), flush=True)
        if r.failures or self.a.keep or not self.completed:
            self.say(f"kept the run's data and logs in {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        return 1 if r.failures else 0
