"""Harness of the Redis durability tests (``test_redis_durability.py``): a standalone Valkey with AOF that a test
kills, rolls back and restarts on the same port; the gateway, the worker and the ``claimgate`` commands as
processes; a bounded, keyed claim loader over HTTP; and reads of the ledger and of Redis for the checks.

Self-contained on purpose (it does not share ``support.py``): these tests run their own Valkey per test and
the session Postgres, and never the session Valkey.

Every process is started in its own session, recorded in the session's pid file (a killed session's leftovers
are ended by the next one) and stopped by its own pid: SIGTERM, then SIGKILL of its process group (granian's
worker child outlives a SIGKILL of its parent).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
from redis.asyncio import Redis

from gateway.devstack.pidfile import PidFile, free_port, kill_pid
from gateway.devstack.valkey import ValkeyServer, start_valkey, stop_valkey
from gateway.keys import KeySpace, idempotency_digest
from tests.conftest import API_KEY, LEDGER_TABLES, ROOT, settings_env
from tests.helpers import token

CLAIMGATE = [sys.executable, "-m", "gateway.cli"]
ADMIN = {"X-API-Key": API_KEY}
KEYS = KeySpace(8, 4)  # the bucket counts tests.conftest.settings_env sets
AOF_DIR = "appendonlydir"  # Valkey's appenddirname: manifest + base (RDB preamble) + incr files
READY_SECONDS = 30.0
DRAIN_SECONDS = 90.0
COMMAND_SECONDS = 120.0
ALLOWED_REFUSALS = frozenset({(409, "sold_out"), (409, "limit_reached")})


def process_env(redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
    """A child's environment: this one's without any CLAIMGATE_ setting of the machine, plus the test servers'."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAIMGATE_")}
    env.update(settings_env(redis_url, database_url, **extra))
    return env


async def truncate_ledger(database_url: str) -> None:
    """Empty the session Postgres's ledger: each test pairs it with a Valkey of its own, empty at start."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"TRUNCATE {LEDGER_TABLES}")
    finally:
        await conn.close()


# --- Valkey with AOF ---------------------------------------------------------------------------------------


class AofValkey:
    """A standalone Valkey with AOF and automatic rewrites off (so a copy of its AOF folder is whole), killed with
    SIGKILL and restarted on the same port and directory, where it loads the AOF."""

    def __init__(self, workdir: Path, pidfile: PidFile, appendfsync: str) -> None:
        self.workdir = workdir
        self.pidfile = pidfile
        self.appendfsync = appendfsync
        self.port = free_port()
        self.server: ValkeyServer | None = None
        self.starts: list[float] = []  # monotonic time each start returned (the server answers PING)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def aof_dir(self) -> Path:
        return self.workdir / AOF_DIR

    @property
    def pid(self) -> int:
        assert self.server is not None
        return self.server.pid

    def start(self) -> ValkeyServer:
        assert self.server is None, "already running"
        self.server = start_valkey(
            self.workdir,
            port=self.port,
            appendonly=True,
            appendfsync=self.appendfsync,
            auto_aof_rewrite=False,
            pidfile=self.pidfile,
        )
        self.starts.append(time.monotonic())
        return self.server

    def kill(self) -> None:
        """kill -9: nothing is flushed; the AOF holds what reached the file before."""
        assert self.server is not None
        kill_pid(self.server.pid)
        self.pidfile.remove(self.server.pid)
        self.server = None

    def stop(self) -> None:
        if self.server is not None:
            stop_valkey(self.server, self.pidfile)
            self.server = None

    def copy_aof(self, side: Path) -> list[tuple[str, int]]:
        """Copy the AOF folder while the server runs and writes (a machine crash's view of it: the tail in flight
        may be cut); the files copied and their sizes."""
        shutil.copytree(self.aof_dir, side)
        return aof_files(side)

    def put_back(self, side: Path) -> None:
        """Replace the (stopped) server's AOF folder with an older copy: a rollback."""
        assert self.server is None, "stop the server before replacing its AOF"
        shutil.rmtree(self.aof_dir)
        shutil.copytree(side, self.aof_dir)

    def log(self) -> str:
        try:
            return (self.workdir / "valkey.log").read_text(errors="replace")
        except OSError:
            return ""


def tear_tail(folder: Path, size: int) -> Path:
    """Cut the last ``size`` bytes off the copy's newest incr file: the last write torn, as a machine crash can
    leave it (the cut lands inside the last script's MULTI ... EXEC block)."""
    incr = max(folder.glob("*.incr.aof"), key=lambda p: int(p.name.split(".")[-3]))
    with open(incr, "r+b") as fh:
        fh.truncate(max(0, incr.stat().st_size - size))
    return incr


def aof_files(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.name, p.stat().st_size) for p in folder.iterdir())


# --- processes ---------------------------------------------------------------------------------------------


@dataclass
class Child:
    kind: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            text = ""
        return f"--- {self.kind} (pid {self.pid}) ---\n" + "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, up to ``timeout`` seconds, then SIGKILL of its group; reaped either way."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # also what a SIGKILLed parent left behind
        return self.popen.wait(10)


class Children:
    """Every process a test starts; ``stop_all`` (in the test's ``finally``) stops each by its own pid."""

    def __init__(self, logdir: Path, pidfile: PidFile) -> None:
        self.logdir = logdir
        self.pidfile = pidfile
        self.started: list[Child] = []

    def start(self, kind: str, command: list[str], env: Mapping[str, str], marker: str) -> Child:
        log = self.logdir / f"{kind}-{len(self.started)}.log"
        with open(log, "ab") as out:
            popen: subprocess.Popen[bytes] = subprocess.Popen(
                command,
                env=dict(env),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(kind, popen, log)
        self.started.append(child)
        self.pidfile.add(child.pid, kind, marker)
        return child

    async def gateway(self, env: Mapping[str, str]) -> Gateway:
        port = free_port()
        command = [*CLAIMGATE, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        # "--port N" is on the command line both before and after `serve` execs granian.
        child = self.start("gateway", command, env, f"--port {port}")
        gateway = Gateway(f"http://127.0.0.1:{port}", child)
        await wait_readiness(gateway, lambda r: r.get("fence") == "open", "the gateway ready, fence open")
        return gateway

    def worker(self, env: Mapping[str, str], name: str) -> Child:
        worker_env = dict(env)
        worker_env["CLAIMGATE_WORKER_NAME"] = name
        worker_env["CLAIMGATE_WORKER_CLAIM_IDLE_MS"] = "500"
        return self.start(f"worker-{name}", [*CLAIMGATE, "worker"], worker_env, "gateway.cli worker")

    def stop(self, child: Child, timeout: float = 10.0) -> int:
        try:
            return child.stop(timeout)
        finally:
            self.pidfile.remove(child.pid)

    def stop_all(self) -> None:
        errors: list[BaseException] = []
        for child in reversed(self.started):
            try:
                self.stop(child)
            except BaseException as exc:  # stop the others anyway
                errors.append(exc)
        if errors:
            raise errors[0]


@dataclass
class Gateway:
    url: str
    child: Child


@dataclass(frozen=True)
class Ran:
    code: int
    output: str


async def claimgate(env: Mapping[str, str], *args: str) -> Ran:
    """``claimgate <args>`` as a process, bounded in time; its exit status and output."""
    result = await asyncio.to_thread(
        subprocess.run,
        [*CLAIMGATE, *args],
        env=dict(env),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS,
    )
    return Ran(result.returncode, result.stdout + result.stderr)


async def readiness(gateway: Gateway) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=3) as http:
        reply = await http.get(f"{gateway.url}/readyz")
    found: dict[str, Any] = reply.json()
    found["http_status"] = reply.status_code
    return found


async def wait_readiness(
    gateway: Gateway, predicate: Callable[[dict[str, Any]], bool], what: str, within: float = READY_SECONDS
) -> dict[str, Any]:
    """Poll ``/readyz`` until ``predicate`` holds for its answer; that answer."""
    deadline = time.monotonic() + within
    last: object = None
    while time.monotonic() < deadline:
        if not gateway.child.alive():
            raise AssertionError(
                f"the gateway exited with {gateway.child.popen.returncode}\n{gateway.child.tail()}"
            )
        try:
            found = await readiness(gateway)
            if predicate(found):
                return found
            last = found
        except (httpx.HTTPError, ValueError) as exc:
            last = repr(exc)
        await asyncio.sleep(0.05)
    raise AssertionError(f"not {what} within {within}s; last /readyz: {last}\n{gateway.child.tail()}")


def fence_open(found: Mapping[str, Any]) -> bool:
    return found.get("http_status") == 200 and found.get("fence") == "open"


# --- the sale ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sale:
    activity_id: str
    stock: int
    per_user_limit: int

    @property
    def tag(self) -> str:
        return KEYS.activity(self.activity_id).tag


async def create_sale(gateway: Gateway, *, stock: int, per_user_limit: int) -> Sale:
    """A template and an activity (a pack of one coupon) through the admin API."""
    async with httpx.AsyncClient(base_url=gateway.url, headers=ADMIN, timeout=10) as http:
        reply = await http.post(
            "/v1/admin/templates", json={"name": "5 off", "kind": "cash", "amount_off": 500, "valid_days": 7}
        )
        assert reply.status_code == 201, reply.text
        template_id = reply.json()["id"]
        now = int(time.time())
        reply = await http.post(
            "/v1/admin/activities",
            json={
                "name": "durability sale",
                "pack": [{"template_id": template_id, "count": 1}],
                "starts_at": now - 10,
                "ends_at": now + 3600,
                "stock": stock,
                "per_user_limit": per_user_limit,
            },
        )
        assert reply.status_code == 201, reply.text
        return Sale(reply.json()["id"], stock, per_user_limit)


# --- the loader --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    user: str
    key: str  # Idempotency-Key: a retry of the request gets the first success's answer

    @property
    def device(self) -> str:
        return f"d-{self.user}"


def attempts(users: Sequence[str], rounds: int, prefix: str) -> list[Request]:
    """Each user claims ``rounds`` times (round after round), each attempt under its own key."""
    return [Request(user, f"{prefix}{n}-{user}") for n in range(rounds) for user in users]


@dataclass(frozen=True)
class Answer:
    request: Request
    status: int
    code: str  # the JSON body's "error" ("" for a 201)
    retry_after: str | None
    sent_at: float  # monotonic
    answered_at: float
    phase: str
    claim_id: str = ""
    message: str = ""


@dataclass
class Loader:
    """A bounded keyed claim load over HTTP: ``concurrency`` requests in flight. A 503 ``overloaded`` is
    retried after its Retry-After (a client's correct behaviour; the key makes the retry safe), so every request
    ends in a final answer: 201 (acknowledged) or a refusal. Every HTTP answer is kept, and every transport
    error (never expected: the gateway stays up)."""

    base_url: str
    activity_id: str
    concurrency: int = 24
    retry_overloaded: bool = True
    max_seconds: float = 120.0
    phase: str = "load"
    answers: list[Answer] = field(default_factory=list)
    acked: dict[str, Answer] = field(default_factory=dict)  # claim id -> the 201
    final: dict[str, Answer] = field(default_factory=dict)  # idempotency key -> the request's final answer
    transport_errors: list[str] = field(default_factory=list)
    unanswered: list[Request] = field(default_factory=list)
    _tokens: dict[str, str] = field(default_factory=dict)
    _gate: asyncio.Event = field(default_factory=asyncio.Event)  # set: requests may be sent
    _idle: asyncio.Event = field(default_factory=asyncio.Event)  # set: no request in flight
    _in_flight: int = 0

    def __post_init__(self) -> None:
        self._gate.set()
        self._idle.set()

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1/activities/{self.activity_id}/claim"

    def acked_ids(self, phase: str | None = None) -> set[str]:
        return {cid for cid, a in self.acked.items() if phase is None or a.phase == phase}

    def _headers(self, request: Request) -> dict[str, str]:
        bearer = self._tokens.get(request.user)
        if bearer is None:
            bearer = self._tokens[request.user] = f"Bearer {token(request.user, request.device)}"
        return {"Authorization": bearer, "Idempotency-Key": request.key}

    async def run(self, requests: Iterable[Request]) -> None:
        pending = iter(requests)
        deadline = time.monotonic() + self.max_seconds
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(10.0)) as http:

            async def lane() -> None:
                for request in pending:  # shared iterator: each request taken by one lane
                    await self._one(http, request, deadline)

            await asyncio.gather(*(lane() for _ in range(self.concurrency)))

    async def _one(self, http: httpx.AsyncClient, request: Request, deadline: float) -> None:
        while True:
            await self._gate.wait()
            if time.monotonic() > deadline:
                self.unanswered.append(request)
                return
            self._in_flight += 1  # no await since the gate: a quiesce sees this request
            self._idle.clear()
            phase, sent = self.phase, time.monotonic()
            try:
                reply = await http.post(self.url, headers=self._headers(request))
            except httpx.TransportError as exc:
                self.transport_errors.append(f"{request}: {exc!r}")
                await asyncio.sleep(0.2)
                continue
            finally:
                self._in_flight -= 1
                if not self._in_flight:
                    self._idle.set()
            answer = self._answer(request, reply, phase, sent)
            self.answers.append(answer)
            if reply.status_code == 503 and answer.code == "overloaded" and self.retry_overloaded:
                await asyncio.sleep(min(float(answer.retry_after or 1), 2.0))
                continue
            self.final[request.key] = answer
            if answer.claim_id:
                held = self.acked.get(answer.claim_id)
                assert held is None or held.request == request, (
                    f"claim id {answer.claim_id} answered to two requests"
                )
                self.acked.setdefault(answer.claim_id, answer)
            return

    @staticmethod
    def _answer(request: Request, reply: httpx.Response, phase: str, sent: float) -> Answer:
        code, claim_id, message = "", "", ""
        try:
            body = msgspec.json.decode(reply.content)
        except msgspec.DecodeError:
            body = None
        if reply.status_code == 201:
            assert isinstance(body, dict) and isinstance(body.get("claim_id"), str), reply.text
            claim_id = body["claim_id"]
        elif isinstance(body, dict):
            code, message = str(body.get("error")), str(body.get("message"))
        else:
            code = f"<not JSON: {reply.text[:80]!r}>"
        return Answer(
            request,
            reply.status_code,
            code,
            reply.headers.get("retry-after"),
            sent,
            time.monotonic(),
            phase,
            claim_id,
            message,
        )

    @contextlib.asynccontextmanager
    async def quiesced(self) -> AsyncIterator[None]:
        """No request in flight inside the block, and none sent: what is acknowledged before it is exactly what
        Redis ran before it."""
        self._gate.clear()
        try:
            await self._idle.wait()
            yield
        finally:
            self._gate.set()

    def overloaded(self, phase: str | None = None) -> Counter[str]:
        """The 503 answers' messages (of one phase), counted."""
        return Counter(a.message for a in self.answers if a.status == 503 and phase in (None, a.phase))

    def summary(self) -> str:
        statuses = Counter((a.status, a.code) for a in self.answers)
        return (
            f"{len(self.answers)} answers {dict(statuses)}; {len(self.acked)} acknowledged; "
            f"{len(self.transport_errors)} transport errors; {len(self.unanswered)} unanswered"
        )

    def assert_clean(self, *, outage: bool) -> None:
        """No transport error, every request answered, and every answer a 201, a refusal the sale explains, or
        (``outage``) a 503 ``overloaded`` with Retry-After."""
        assert not self.transport_errors, f"{self.transport_errors[:3]}; {self.summary()}"
        assert not self.unanswered, f"requests left without a final answer: {self.summary()}"
        bad = [
            a
            for a in self.answers
            if a.status != 201
            and (a.status, a.code) not in ALLOWED_REFUSALS
            and not (outage and a.status == 503 and a.code == "overloaded" and a.retry_after)
        ]
        assert not bad, f"unexpected answers, e.g. {bad[:3]}; {self.summary()}"


async def when(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.005)


# --- the ledger and Redis ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimRow:
    claim_id: str
    user_id: str
    ordinal: int | None


async def ledger_claims(database_url: str, activity_id: str) -> list[ClaimRow]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT claim_id, user_id, ordinal FROM claims WHERE activity_id = $1", activity_id
        )
    finally:
        await conn.close()
    return [ClaimRow(r["claim_id"], r["user_id"], r["ordinal"]) for r in rows]


async def ledger_marks(database_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT partition, seq FROM partition_marks")
    finally:
        await conn.close()
    return {r["partition"]: int(r["seq"]) for r in rows}


async def ledger_conflicts(database_url: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT partition, entry_id, reason FROM conflicts")
    finally:
        await conn.close()
    return [dict(r) for r in rows]


async def registered_streams(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT stream FROM streams ORDER BY stream")
    finally:
        await conn.close()
    return [r["stream"] for r in rows]


async def seqs_behind(redis: Redis, database_url: str) -> dict[str, tuple[int, int]]:
    """Partitions whose ``seq`` in Redis is below the ledger's mark: (redis, ledger)."""
    behind = {}
    for partition, mark in (await ledger_marks(database_url)).items():
        seq = int(await redis.get(f"{partition}:seq") or 0)
        if seq < mark:
            behind[partition] = (seq, mark)
    return behind


async def stream_backlog(redis: Redis, database_url: str) -> dict[str, tuple[int, int]]:
    """Per registered stream not yet drained: (pending, undelivered) of its consumer group."""
    behind: dict[str, tuple[int, int]] = {}
    for stream in await registered_streams(database_url):
        if not await redis.exists(stream):
            continue
        group = next((g for g in await redis.xinfo_groups(stream) if g["name"] == stream), None)
        if group is None:
            behind[stream] = (0, -1)
            continue
        lag = group["lag"]
        if lag is None:  # Redis cannot tell: compare the last delivered id with the stream's last id
            info = await redis.xinfo_stream(stream)
            lag = 0 if _entry_id(group["last-delivered-id"]) >= _entry_id(info["last-generated-id"]) else -1
        if int(group["pending"]) or int(lag):
            behind[stream] = (int(group["pending"]), int(lag))
    return behind


def _entry_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def wait_drained(
    redis: Redis, database_url: str, workers: Sequence[Child], within: float = DRAIN_SECONDS
) -> None:
    """Until every registered stream has nothing pending and nothing undelivered, twice in a row."""
    deadline = time.monotonic() + within
    clean_rounds = 0
    behind: dict[str, tuple[int, int]] = {}
    while clean_rounds < 2:
        for worker in workers:
            assert worker.alive(), f"a worker exited\n{worker.tail()}"
        behind = await stream_backlog(redis, database_url)
        clean_rounds = 0 if behind else clean_rounds + 1
        if time.monotonic() > deadline:
            tails = "\n".join(w.tail() for w in workers)
            raise AssertionError(f"streams not drained within {within}s: {behind}\n{tails}")
        await asyncio.sleep(0.1)


async def claims_in_stream(redis: Redis, sale: Sale) -> set[str]:
    """Claim ids of the ``claimed`` entries the activity's stream holds (entries trimmed after they were
    persisted are in the ledger instead)."""
    entries = await redis.xrange(KEYS.activity(sale.activity_id).events) or []
    return {str(fields["claim_id"]) for _, fields in entries if fields and fields.get("type") == "claimed"}


async def idempotency_answers(redis: Redis, sale: Sale, answers: Iterable[Answer]) -> dict[str, str | None]:
    """For each acknowledged answer, the claim id Redis's idempotency record of its request holds (None when
    Redis has no record)."""
    keys = KEYS.activity(sale.activity_id)
    found: dict[str, str | None] = {}
    chosen = list(answers)
    pipe = redis.pipeline(transaction=False)
    for answer in chosen:
        pipe.get(f"{keys.tag}:idem:{idempotency_digest(answer.request.user, answer.request.key)}")
    for answer, record in zip(chosen, await pipe.execute(), strict=True):
        if record is None:
            found[answer.claim_id] = None
            continue
        body = msgspec.json.decode(record.split("|", 1)[1])
        found[answer.claim_id] = body["claim_id"]
    return found


@dataclass(frozen=True)
class Consistency:
    rows: int
    users: int
    stock_left: int
    taken: int


async def assert_consistent(redis: Redis, database_url: str, sale: Sale) -> Consistency:
    """After a full drain: no unit sold twice (each claim holds its own ordinal), no oversell, no user above its
    limit, nothing in ``conflicts``, and Redis's stock, taken and per-user counts equal the ledger's."""
    rows = await ledger_claims(database_url, sale.activity_id)
    ids = [r.claim_id for r in rows]
    assert len(ids) == len(set(ids)), f"a claim id twice: {[c for c, n in Counter(ids).items() if n > 1][:5]}"
    ordinals = [r.ordinal for r in rows]
    assert None not in ordinals, "a claims row without its ordinal"
    assert len(set(ordinals)) == len(rows), (
        f"a unit sold twice: {[o for o, n in Counter(ordinals).items() if n > 1][:5]}"
    )
    assert len(rows) <= sale.stock, f"oversold: {len(rows)} claims of {sale.stock}"
    assert all(1 <= o <= sale.stock for o in ordinals if o is not None), "a unit beyond the stock"
    per_user = Counter(r.user_id for r in rows)
    over = {u: n for u, n in per_user.items() if n > sale.per_user_limit}
    assert not over, f"users above their limit of {sale.per_user_limit}: {dict(list(over.items())[:5])}"
    conflicts = await ledger_conflicts(database_url)
    assert not conflicts, f"entries the ledger refused: {conflicts[:3]}"
    keys = KEYS.activity(sale.activity_id)
    stock_left, taken = (int(str(v)) for v in await redis.hmget(keys.config, ["stock_left", "taken"]))
    assert taken == len(rows), f"Redis taken {taken}, ledger {len(rows)} claims"
    assert stock_left + taken == sale.stock, (stock_left, taken, sale.stock)
    redis_users = {str(u): int(n) for u, n in (await redis.hgetall(keys.user_counts)).items()}
    differ = {
        u: (redis_users.get(u), per_user.get(u))
        for u in set(redis_users) | set(per_user)
        if redis_users.get(u) != per_user.get(u)
    }
    assert not differ, f"per-user counts differ (redis, ledger): {dict(list(differ.items())[:10])}"
    behind = await seqs_behind(redis, database_url)
    assert not behind, f"partitions behind the ledger: {behind}"
    return Consistency(len(rows), len(per_user), stock_left, taken)


async def assert_reconciled(env: Mapping[str, str]) -> Ran:
    found = await claimgate(env, "reconcile")
    assert found.code == 0, f"claimgate reconcile exited with {found.code}:\n{found.output}"
    return found


async def poll_during(seconds: float, interval: float, probe: Callable[[], Awaitable[None]]) -> int:
    """Run ``probe`` every ``interval`` for ``seconds``; how many times it ran."""
    deadline = time.monotonic() + seconds
    runs = 0
    while time.monotonic() < deadline:
        await probe()
        runs += 1
        await asyncio.sleep(interval)
    return runs
