"""The fault harness: real gateway and worker processes against the test servers, the ``claimgate`` commands, a
bounded claim loader over HTTP, reads of the ledger and of Redis, and the checks that end every fault test.

Every process is started in its own session (its pid is its process group's id), recorded in the session's
pidfile (a killed session's leftovers are ended by the next one) and stopped by its own pid: SIGTERM, then
SIGKILL of its group (granian's worker child outlives a SIGKILL of its parent and keeps serving the port).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
from redis.asyncio import Redis

from gateway.devstack.pidfile import PidFile, free_port
from gateway.keys import KeySpace, Partition, idempotency_digest, partition_of_stream
from tests.conftest import API_KEY, LEDGER_TABLES, ROOT, settings_env
from tests.helpers import token

CLAIMGATE = [sys.executable, "-m", "claimgate.cli"]
ADMIN = {"X-API-Key": API_KEY}
WALLET_BUCKETS, CODE_BUCKETS = 8, 4  # as tests.conftest.settings_env sets them
KEYS = KeySpace(WALLET_BUCKETS, CODE_BUCKETS)
READY_SECONDS = 30.0
DRAIN_SECONDS = 90.0
COMMAND_SECONDS = 120.0
EXPECTED_REFUSALS = frozenset({(409, "sold_out"), (409, "limit_reached")})


def process_env(redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a child process: this one's, without any CLAIMGATE_ setting of the machine, plus the
    test servers' settings (``extra``: ``worker_name="w1"`` -> ``CLAIMGATE_WORKER_NAME=w1``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAIMGATE_")}
    env.update(settings_env(redis_url, database_url, **extra))
    return env


def with_settings(env: Mapping[str, str], **extra: str) -> dict[str, str]:
    changed = dict(env)
    changed.update({f"CLAIMGATE_{k.upper()}": v for k, v in extra.items()})
    return changed


async def query(database_url: str, sql: str, *args: Any) -> list[Any]:
    """One statement on a connection of its own; its rows."""
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def truncate_ledger(database_url: str) -> None:
    """Empty the ledger (for a test that pairs it with a Redis of its own, empty at start)."""
    await query(database_url, f"TRUNCATE {LEDGER_TABLES}")


# --- processes ---------------------------------------------------------------------------------------------


@dataclass
class Proc:
    kind: str
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return f"--- {self.kind} {self.name} (pid {self.pid}) log tail ---\n" + "\n".join(
            self.text().splitlines()[-lines:]
        )

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill_group(self) -> None:
        """SIGKILL the process and whatever it started (its group: it was started in a session of its own)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    async def wait_exit(self, within: float) -> int | None:
        deadline = time.monotonic() + within
        while self.popen.poll() is None:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.02)
        return self.popen.returncode

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, up to ``timeout`` seconds, then SIGKILL of the group; reaped either way."""
        self.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)
        self.kill_group()  # also the children a SIGKILLed parent left behind
        return self.popen.wait(10)


class Processes:
    """Every process a test starts; ``stop_all`` (the fixture's finalizer) stops each by its own pid."""

    def __init__(self, logdir: Path, pidfile: PidFile) -> None:
        self.logdir = logdir
        self.pidfile = pidfile
        self.started: list[Proc] = []

    def start(self, kind: str, name: str, command: list[str], env: Mapping[str, str], marker: str) -> Proc:
        log = self.logdir / f"{kind}-{name}.log"
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
        proc = Proc(kind, name, popen, log)
        self.started.append(proc)
        self.pidfile.add(proc.pid, kind, marker)
        return proc

    def worker(self, env: Mapping[str, str], name: str | None = None, **extra: str) -> Proc:
        """``claimgate worker`` under its own consumer name (``extra``: more settings, e.g. claim_idle_ms)."""
        name = name or f"w-{uuid.uuid4().hex[:8]}"
        worker_env = with_settings(env, worker_name=name, **extra)
        return self.start("worker", name, [*CLAIMGATE, "worker"], worker_env, "claimgate.cli worker")

    def gateway_process(
        self, env: Mapping[str, str], port: int, name: str = "gw", ops_port: int | None = None
    ) -> Proc:
        command = [*CLAIMGATE, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        ops_env = with_settings(env, ops_port=str(ops_port)) if ops_port else env
        # "--port N" is in the command line both before and after `serve` execs granian.
        return self.start("gateway", name, command, ops_env, f"--port {port}")

    async def gateway(self, env: Mapping[str, str], port: int | None = None, name: str = "gw") -> Gateway:
        """A gateway on ``port`` (a free one by default), with its operations listener on another free port,
        once the detailed /readyz answers 200 with the fence open."""
        port = port or free_port()
        ops_port = free_port()
        proc = self.gateway_process(env, port, name, ops_port)
        gateway = Gateway(f"http://127.0.0.1:{port}", port, proc, f"http://127.0.0.1:{ops_port}")
        await wait_readiness(gateway, fence_open, "the gateway ready, fence open")
        return gateway

    def stop(self, proc: Proc, timeout: float = 10.0) -> int:
        try:
            return proc.stop(timeout)
        finally:
            self.pidfile.remove(proc.pid)

    def stop_all(self) -> None:
        errors: list[BaseException] = []
        for proc in reversed(self.started):
            try:
                self.stop(proc)
            except BaseException as exc:  # stop the others anyway
                errors.append(exc)
        if errors:
            raise errors[0]


@dataclass
class Gateway:
    url: str
    port: int
    proc: Proc
    ops_url: str  # its operations listener: the detailed /readyz


async def readiness(gateway: Gateway) -> dict[str, Any]:
    """The operations listener's /readyz: its JSON answer with ``http_status`` added (a 200 must be JSON;
    another answer that is not is kept as ``body``)."""
    async with httpx.AsyncClient(timeout=3) as http:
        reply = await http.get(f"{gateway.ops_url}/readyz")
    try:
        found: dict[str, Any] = reply.json()
    except ValueError:
        assert reply.status_code != 200, f"/readyz answered 200 without JSON: {reply.text[:200]!r}"
        found = {"body": reply.text}
    found["http_status"] = reply.status_code
    return found


def fence_open(found: Mapping[str, Any]) -> bool:
    return found.get("http_status") == 200 and found.get("fence") == "open"


async def wait_readiness(
    gateway: Gateway, predicate: Callable[[dict[str, Any]], bool], what: str, within: float = READY_SECONDS
) -> dict[str, Any]:
    """Poll ``/readyz`` until ``predicate`` holds for its answer; that answer. The gateway must stay up."""
    deadline = time.monotonic() + within
    last: object = None
    while time.monotonic() < deadline:
        if not gateway.proc.alive():
            raise AssertionError(f"the gateway exited with {gateway.proc.returncode}\n{gateway.proc.tail()}")
        try:
            found = await readiness(gateway)
            if predicate(found):
                return found
            last = found
        except httpx.HTTPError as exc:
            last = repr(exc)
        await asyncio.sleep(0.05)
    raise AssertionError(f"not {what} within {within}s; last /readyz: {last}\n{gateway.proc.tail()}")


@dataclass(frozen=True)
class Ran:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def differences(self) -> list[str]:
        """What ``claimgate reconcile`` found different."""
        return [
            line.removeprefix("difference: ")
            for line in self.output.splitlines()
            if line.startswith("difference: ")
        ]

    @property
    def repaired(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.startswith("repaired: ")]


async def claimgate(env: Mapping[str, str], *args: str, within: float = COMMAND_SECONDS) -> Ran:
    """``claimgate <args>`` as a process, bounded in time (``within`` seconds); its exit status and output."""
    result = await asyncio.to_thread(
        subprocess.run,
        [*CLAIMGATE, *args],
        env=dict(env),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=within,
    )
    return Ran(result.returncode, result.stdout, result.stderr)


async def assert_reconciled(env: Mapping[str, str]) -> Ran:
    """``claimgate reconcile`` finds no difference between Redis and the ledger (exit 0; 1 = differences), and
    nothing half-done to finish (after a full drain there is none)."""
    found = await claimgate(env, "reconcile")
    assert found.code == 0, f"claimgate reconcile exited with {found.code}:\n{found.output}"
    assert not found.repaired, found.output
    return found


# --- the sale ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sale:
    activity_id: str
    template_ids: tuple[str, ...]
    stock: int
    per_user_limit: int

    @property
    def pack_size(self) -> int:
        return len(self.template_ids)

    @property
    def tag(self) -> str:
        return KEYS.activity(self.activity_id).tag


async def create_sale(base_url: str, *, stock: int, per_user_limit: int = 2, pack_size: int = 2) -> Sale:
    """Templates and an activity through the admin API: a pack of ``pack_size`` coupons (one per template)."""
    async with httpx.AsyncClient(base_url=base_url, headers=ADMIN, timeout=10) as http:
        template_ids = []
        for n in range(pack_size):
            body = {"name": f"{n + 1} off", "kind": "cash", "amount_off": 100 * (n + 1), "valid_days": 7}
            reply = await http.post("/v1/admin/templates", json=body)
            assert reply.status_code == 201, reply.text
            template_ids.append(reply.json()["id"])
        now = int(time.time())
        reply = await http.post(
            "/v1/admin/activities",
            json={
                "name": "fault sale",
                "pack": [{"template_id": t, "count": 1} for t in template_ids],
                "starts_at": now - 10,
                "ends_at": now + 3600,
                "stock": stock,
                "per_user_limit": per_user_limit,
            },
        )
        assert reply.status_code == 201, reply.text
        activity_id: str = reply.json()["id"]
    return Sale(activity_id, tuple(template_ids), stock, per_user_limit)


# --- the loader --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    user: str
    device: str
    key: str  # the Idempotency-Key when the load is keyed: a retry gets the first success's answer


def plan(users: int, *, prefix: str = "u") -> list[Request]:
    """Each user claims once; every 5th user a second time and every 20th a third time (after everyone's
    first), so per-user counts of 1 and 2 and ``limit_reached`` refusals (with a per-user limit of 2) occur."""
    names = [f"{prefix}{i:05d}" for i in range(users)]
    requests = [Request(u, f"d-{u}", f"k1-{u}") for u in names]
    requests += [Request(u, f"d-{u}", f"k2-{u}") for u in names[::5]]
    requests += [Request(u, f"d-{u}", f"k3-{u}") for u in names[::20]]
    return requests


def attempts(users: Sequence[str], rounds: int, prefix: str) -> list[Request]:
    """Each user claims ``rounds`` times (round after round), each attempt under its own key."""
    return [Request(user, f"d-{user}", f"{prefix}{n}-{user}") for n in range(rounds) for user in users]


@dataclass(frozen=True)
class Answer:
    """One HTTP answer to a claim request."""

    request: Request
    status: int
    body: str  # as sent
    code: str  # the JSON body's "error" ("" for a 201)
    message: str
    claim_id: str  # of a 201
    retry_after: str | None
    sent_at: float  # monotonic
    answered_at: float
    phase: str
    after_error: bool  # the request was sent again after a transport error

    @classmethod
    def of(
        cls, request: Request, reply: httpx.Response, phase: str, sent_at: float, after_error: bool
    ) -> Answer:
        code, claim_id, message = "", "", ""
        try:
            body = msgspec.json.decode(reply.content)
        except msgspec.DecodeError:
            code = f"<not JSON: {reply.text[:80]!r}>"
        else:
            if reply.status_code == 201:
                assert isinstance(body, dict) and isinstance(body.get("claim_id"), str), reply.text
                claim_id = body["claim_id"]
            elif isinstance(body, dict):
                code, message = str(body.get("error")), str(body.get("message"))
            else:
                code = f"<{body!r}>"
        assert reply.status_code != 201 or claim_id, f"a 201 that is not JSON: {reply.text[:200]!r}"
        return cls(
            request,
            reply.status_code,
            reply.text,
            code,
            message,
            claim_id,
            reply.headers.get("retry-after"),
            sent_at,
            time.monotonic(),
            phase,
            after_error,
        )


@dataclass
class Load:
    """A bounded claim load: ``requests`` sent with ``concurrency`` in flight, at most ``rate`` per second; ``run``
    may be given more requests later (each answer is tagged with the ``phase`` it was sent in).

    Every HTTP answer is kept (``answers``); each request ends in one final answer (``final``), a 201 being an
    acknowledged claim (``acked``: claim id -> its answer). A transport error (no answer: the gateway is away)
    is kept; with ``retry`` the same request (same Idempotency-Key, so a claim that ran answers as a replay) is
    sent again until answered, else it is recorded in ``unanswered`` (such a claim may or may not have run).
    With ``retry_overloaded`` a 503 ``overloaded`` is sent again after its Retry-After (a client's correct
    behaviour; the key makes it safe). A request not answered within ``max_seconds`` of its run's start stays
    in ``unanswered``."""

    base_url: str
    activity_id: str
    requests: list[Request] = field(default_factory=list)
    concurrency: int = 32
    rate: float | None = None
    keyed: bool = False
    retry: bool = False
    retry_overloaded: bool = False
    max_seconds: float = 120.0
    phase: str = "load"
    answers: list[Answer] = field(default_factory=list)
    final: list[Answer] = field(default_factory=list)
    acked: dict[str, Answer] = field(default_factory=dict)
    transport_errors: list[httpx.TransportError] = field(default_factory=list)
    unanswered: list[Request] = field(default_factory=list)
    started_at: float = 0.0
    finished_at: float = 0.0
    task: asyncio.Task[Load] | None = field(default=None, repr=False)
    _tokens: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)
    _gate: asyncio.Event = field(default_factory=asyncio.Event, repr=False)  # set: requests may be sent
    _idle: asyncio.Event = field(default_factory=asyncio.Event, repr=False)  # set: no request in flight
    _in_flight: int = 0

    def __post_init__(self) -> None:
        assert self.keyed or not (self.retry or self.retry_overloaded), "only a keyed request is sent again"
        self._gate.set()
        self._idle.set()

    @property
    def url(self) -> str:
        return f"/v1/activities/{self.activity_id}/claim"

    @property
    def seconds(self) -> float:
        return (self.finished_at or time.monotonic()) - self.started_at

    @property
    def refusals(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 201]

    @property
    def acked_after_error(self) -> int:
        return sum(a.after_error for a in self.acked.values())

    def acked_ids(self, phase: str | None = None) -> set[str]:
        return {cid for cid, a in self.acked.items() if phase is None or a.phase == phase}

    def overloaded(self, phase: str | None = None) -> Counter[str]:
        """The 503 answers' messages (of one phase), counted."""
        return Counter(a.message for a in self.answers if a.status == 503 and phase in (None, a.phase))

    def summary(self) -> str:
        return (
            f"{len(self.requests)} requests in {self.seconds:.1f}s: {len(self.acked)} acked, answers "
            f"{dict(Counter((a.status, a.code) for a in self.answers))}, transport errors "
            f"{dict(Counter(type(e).__name__ for e in self.transport_errors))}, unanswered {len(self.unanswered)}"
        )

    def assert_answered(self, *, outage: bool = False) -> None:
        """Every request answered, and every answer a 201, a refusal the sale explains (409 sold out or past the
        per-user limit), or (``outage``) a 503 ``overloaded`` with Retry-After."""
        assert not self.unanswered, f"requests left without a final answer: {self.summary()}"
        bad = [
            a
            for a in self.refusals
            if (a.status, a.code) not in EXPECTED_REFUSALS
            and not (outage and a.status == 503 and a.code == "overloaded" and a.retry_after)
        ]
        assert not bad, (
            f"unexpected answers {Counter((a.status, a.code) for a in bad)}: {bad[:3]}; {self.summary()}"
        )

    def assert_clean(self, *, outage: bool = False) -> None:
        """No transport error (the gateway stayed up), and ``assert_answered``."""
        assert not self.transport_errors, f"{self.transport_errors[:3]}; {self.summary()}"
        self.assert_answered(outage=outage)

    def start(self, requests: Iterable[Request] | None = None) -> asyncio.Task[Load]:
        """``run`` in the background (``finish`` ends it if the test fails first)."""
        self.task = asyncio.create_task(self.run(requests))
        return self.task

    async def wait_acked(self, count: int, within: float = 60.0) -> None:
        """Until ``count`` claims are acknowledged, or the background run has ended."""
        task = self.task
        assert task is not None, "start the load first"
        await wait_until(
            f"{count} acknowledged claims", lambda: len(self.acked) >= count or task.done(), within
        )

    async def run(self, requests: Iterable[Request] | None = None) -> Load:
        """Send ``requests`` (added to ``self.requests``), or else ``self.requests``; each until its final
        answer."""
        batch = list(self.requests) if requests is None else list(requests)
        if requests is not None:
            self.requests.extend(batch)
        started = time.monotonic()
        self.started_at = self.started_at or started
        self.finished_at = 0.0
        pending = iter(enumerate(batch))  # shared by the senders: each request taken by one
        await asyncio.gather(*(self._sender(pending, started) for _ in range(self.concurrency)))
        self.finished_at = time.monotonic()
        return self

    async def _sender(self, pending: Iterator[tuple[int, Request]], started: float) -> None:
        # A client (one connection) per sender: httpcore's shared pool costs O(connections) per request.
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=self.base_url, limits=limits, timeout=10) as http:
            for index, request in pending:
                if self.rate:
                    delay = started + index / self.rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await self._send(http, request, started + self.max_seconds)

    def _headers(self, request: Request) -> dict[str, str]:
        bearer = self._tokens.get((request.user, request.device))
        if bearer is None:
            bearer = f"Bearer {token(request.user, request.device)}"
            self._tokens[request.user, request.device] = bearer
        headers = {"Authorization": bearer}
        if self.keyed:
            headers["Idempotency-Key"] = request.key
        return headers

    async def _send(self, http: httpx.AsyncClient, request: Request, deadline: float) -> None:
        after_error = False
        while True:
            await self._gate.wait()
            if time.monotonic() > deadline:
                self.unanswered.append(request)
                return
            self._in_flight += 1  # no await since the gate: a quiesce sees this request
            self._idle.clear()
            phase, sent_at = self.phase, time.monotonic()
            try:
                reply = await http.post(self.url, headers=self._headers(request))
            except httpx.TransportError as exc:
                self.transport_errors.append(exc)
                if not self.retry:
                    self.unanswered.append(request)
                    return
                after_error = True
                await asyncio.sleep(0.1)
                continue
            finally:
                self._in_flight -= 1
                if not self._in_flight:
                    self._idle.set()
            answer = Answer.of(request, reply, phase, sent_at, after_error)
            self.answers.append(answer)
            if self.retry_overloaded and answer.status == 503 and answer.code == "overloaded":
                await asyncio.sleep(min(float(answer.retry_after or 1), 2.0))
                continue
            self.final.append(answer)
            if answer.claim_id:
                assert answer.claim_id not in self.acked, f"claim id {answer.claim_id} answered twice"
                self.acked[answer.claim_id] = answer
            return

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


async def finish(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` if it still runs and wait until it has ended (a test failing mid-load leaves no task
    behind)."""
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await asyncio.wait_for(task, 10)


async def wait_until(what: str, predicate: Any, within: float, interval: float = 0.02) -> None:
    """Poll ``predicate()`` (sync or async) until true."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


async def poll_during(seconds: float, interval: float, probe: Callable[[], Awaitable[None]]) -> int:
    """Run ``probe`` every ``interval`` for ``seconds``; how many times it ran."""
    deadline = time.monotonic() + seconds
    runs = 0
    while time.monotonic() < deadline:
        await probe()
        runs += 1
        await asyncio.sleep(interval)
    return runs


# --- streams -----------------------------------------------------------------------------------------------


async def registered_streams(database_url: str) -> list[str]:
    """The streams registered in the ledger, activity streams first (a ``claimed`` entry is acknowledged only
    after its ``delivered`` entry is in a wallet stream, so reading activity streams first sees every entry)."""
    rows = await query(database_url, "SELECT stream, kind FROM streams")
    return [r["stream"] for r in sorted(rows, key=lambda r: (r["kind"] != "activity", r["stream"]))]


async def stream_backlog(redis: Redis, streams: Iterable[str]) -> dict[str, tuple[int, int]]:
    """Per stream not yet drained: (pending, lag) of its group (lag -1 when Redis cannot tell and the group's
    last delivered id is behind the stream's last id)."""
    behind: dict[str, tuple[int, int]] = {}
    for stream in streams:
        if not await redis.exists(stream):
            continue
        groups = {g["name"]: g for g in await redis.xinfo_groups(stream)}
        group = groups.get(stream)
        if group is None:
            behind[stream] = (0, -2)  # no group yet: the worker has not seen this stream
            continue
        pending, lag = int(group["pending"]), group["lag"]
        if lag is None:
            info = await redis.xinfo_stream(stream)
            lag = 0 if _id(group["last-delivered-id"]) >= _id(info["last-generated-id"]) else -1
        if pending or lag:
            behind[stream] = (pending, int(lag))
    return behind


# Entries the ledger holds for a claim it now holds: the worker applies them within a second at most.
RELEASABLE = (
    "SELECT count(*) AS n FROM held_entries AS h"
    " WHERE EXISTS (SELECT 1 FROM claims AS c WHERE c.claim_id = h.claim_id)"
)


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def wait_drained(
    redis: Redis, database_url: str, workers: Sequence[Proc], within: float = DRAIN_SECONDS
) -> None:
    """Until every registered stream's group has nothing pending and nothing undelivered, and nothing waits in
    the ledger for a claim it holds, twice in a row."""
    deadline = time.monotonic() + within
    clean_rounds = 0
    behind: dict[str, tuple[int, int]] = {}
    while clean_rounds < 2:
        for worker in workers:
            assert worker.alive(), f"a worker exited with {worker.returncode}\n{worker.tail()}"
        streams = await registered_streams(database_url)
        behind = await stream_backlog(redis, streams)
        waiting = await query(database_url, RELEASABLE)
        if waiting[0]["n"]:
            behind["held_entries"] = (int(waiting[0]["n"]), 0)
        clean_rounds = 0 if behind else clean_rounds + 1
        if time.monotonic() > deadline:
            tails = "\n".join(w.tail() for w in workers)
            raise AssertionError(f"streams not drained within {within}s: {behind}\n{tails}")
        await asyncio.sleep(0.1)


async def drain(procs: Processes, env: Mapping[str, str], redis: Redis, **extra: str) -> Proc:
    """Run a fresh worker until the streams are drained, then stop it (SIGTERM: it must exit 0)."""
    worker = procs.worker(env, name=f"drainer-{uuid.uuid4().hex[:6]}", worker_claim_idle_ms="500", **extra)
    await wait_drained(redis, env["CLAIMGATE_DATABASE_URL"], [worker])
    code = procs.stop(worker)
    assert code == 0, f"the draining worker exited with {code}\n{worker.tail()}"
    return worker


async def dead_letter_counts(redis: Redis, database_url: str) -> dict[str, int]:
    counts = {}
    for stream in await registered_streams(database_url):
        dead = Partition(partition_of_stream(stream)).dead_letters
        counts[dead] = int(await redis.xlen(dead))
    return counts


async def pending_entries_of(
    redis: Redis, consumer: str, database_url: str
) -> list[tuple[str, dict[str, str]]]:
    """The entries ``consumer`` holds pending, with their fields, over every registered stream."""
    found: list[tuple[str, dict[str, str]]] = []
    for stream in await registered_streams(database_url):
        if not await redis.exists(stream):
            continue
        rows = await redis.xpending_range(
            stream, stream, min="-", max="+", count=100_000, consumername=consumer
        )
        for row in rows:
            entries = await redis.xrange(stream, min=row["message_id"], max=row["message_id"]) or []
            found.extend((stream, strs(fields or {})) for _, fields in entries)
    return found


async def claims_in_stream(redis: Redis, sale: Sale) -> set[str]:
    """Claim ids of the ``claimed`` entries the activity's stream holds (entries trimmed after they were
    persisted are in the ledger instead)."""
    entries = await redis.xrange(KEYS.activity(sale.activity_id).events) or []
    return {str(fields["claim_id"]) for _, fields in entries if fields and fields.get("type") == "claimed"}


# --- the ledger and Redis ----------------------------------------------------------------------------------


async def claims_rows(database_url: str) -> int:
    """How many claims the ledger holds."""
    return int((await query(database_url, "SELECT count(*) AS n FROM claims"))[0]["n"])


@dataclass(frozen=True)
class ClaimRow:
    claim_id: str
    user_id: str
    ordinal: int | None


async def ledger_claims(database_url: str, activity_id: str) -> list[ClaimRow]:
    rows = await query(
        database_url, "SELECT claim_id, user_id, ordinal FROM claims WHERE activity_id = $1", activity_id
    )
    return [ClaimRow(r["claim_id"], r["user_id"], r["ordinal"]) for r in rows]


async def ledger_marks(database_url: str) -> dict[str, int]:
    rows = await query(database_url, "SELECT partition, seq FROM partition_marks")
    return {r["partition"]: int(r["seq"]) for r in rows}


async def ledger_conflicts(database_url: str) -> list[dict[str, Any]]:
    """The entries the ledger's checks refused."""
    return [dict(r) for r in await query(database_url, "SELECT partition, entry_id, reason FROM conflicts")]


async def seqs_behind(redis: Redis, database_url: str) -> dict[str, tuple[int, int]]:
    """Partitions whose ``seq`` in Redis is below the ledger's mark: (redis, ledger)."""
    behind = {}
    for partition, mark in (await ledger_marks(database_url)).items():
        seq = int(await redis.get(f"{partition}:seq") or 0)
        if seq < mark:
            behind[partition] = (seq, mark)
    return behind


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


async def activity_counts(redis: Redis, sale: Sale) -> tuple[int, int]:
    """Redis's stock left and units taken of the sale."""
    config = KEYS.activity(sale.activity_id).config
    stock_left, taken = (int(str(v)) for v in await redis.hmget(config, ["stock_left", "taken"]))
    return stock_left, taken


async def counts_hash(redis: Redis, key: str) -> dict[str, int]:
    """A per-user or per-device counts hash, typed."""
    return {str(k): int(n) for k, n in (await redis.hgetall(key)).items()}


# --- the checks --------------------------------------------------------------------------------------------


@dataclass
class Ledger:
    claims: int
    coupons: int


async def assert_exactly_once(
    redis: Redis,
    database_url: str,
    sale: Sale,
    load: Load,
    *,
    ledger_only: Mapping[str, str] | None = None,
    allow_dead_letters: int = 0,
) -> Ledger:
    """After the streams are drained: Postgres holds exactly the acknowledged claims, each once, with their
    coupons and coupon events once each; Redis's stock, per-user and per-device counts and wallets agree;
    nothing is pending, nothing dead-lettered, and each partition's mark is its seq.

    ``ledger_only``: claims (id -> user) the ledger holds that never went through the claim script (a poison
    entry written to the stream by hand): in Postgres, not in Redis's counts.
    """
    ledger_only = dict(ledger_only or {})
    assert not load.unanswered, f"requests without an answer cannot be checked: {load.summary()}"
    acked = load.acked
    expected_ids = set(acked) | set(ledger_only)
    conn = await asyncpg.connect(database_url)
    try:
        claims = await conn.fetch(
            "SELECT claim_id, user_id, device_id, answer, mode, ordinal FROM claims WHERE activity_id = $1",
            sale.activity_id,
        )
        coupons = await conn.fetch(
            "SELECT coupon_id, claim_id, user_id, template_id, version FROM coupons WHERE activity_id = $1",
            sale.activity_id,
        )
        expected_coupons = sorted(f"{c}.{n}" for c in expected_ids for n in range(1, sale.pack_size + 1))
        events = await conn.fetch(
            "SELECT coupon_id, version, type FROM coupon_events WHERE coupon_id = ANY($1::text[])",
            expected_coupons,
        )
        claims_by_event = await conn.fetchval(
            "SELECT count(DISTINCT event_id) FROM claims WHERE activity_id = $1", sale.activity_id
        )
        idempotency = await conn.fetchval(
            "SELECT count(*) FROM idempotency_records WHERE partition = $1", sale.tag
        )
    finally:
        await conn.close()
    marks = await ledger_marks(database_url)
    conflicts = await ledger_conflicts(database_url)

    # Claims: exactly the acknowledged ones, each once, each as answered.
    claim_ids = [r["claim_id"] for r in claims]
    doubled = [c for c, n in Counter(claim_ids).items() if n > 1]
    assert not doubled, f"claims persisted more than once: {doubled[:10]}"
    assert claims_by_event == len(claims), "two claims rows share an event"
    missing = expected_ids - set(claim_ids)
    extra = set(claim_ids) - expected_ids
    assert not missing, (
        f"{len(missing)} acknowledged claims missing from Postgres, e.g. {sorted(missing)[:5]}"
    )
    assert not extra, f"{len(extra)} claims in Postgres never acknowledged, e.g. {sorted(extra)[:5]}"
    assert len(claims) == len(expected_ids)
    assert not conflicts, f"{len(conflicts)} entries the ledger's checks refused, e.g. {conflicts[:3]}"
    # Each claim holds its own unit of the stock: ordinals 1..granted, none twice, none skipped.
    ordinals = sorted(r["ordinal"] for r in claims if r["claim_id"] in acked)
    assert ordinals == list(range(1, len(acked) + 1)), "units (ordinals) are not exactly 1..granted"
    for row in claims:
        answer = acked.get(row["claim_id"])
        if answer is None:
            assert row["user_id"] == ledger_only[row["claim_id"]]
            continue
        request = answer.request
        assert (row["user_id"], row["device_id"], row["mode"]) == (request.user, request.device, "claim"), row
        assert row["answer"] == answer.body, (row["answer"], answer.body)

    # Coupons: pack size per claim, each once, owned as claimed; one coupon event each (version 1, delivered).
    coupon_ids = [r["coupon_id"] for r in coupons]
    assert len(coupon_ids) == len(set(coupon_ids)) == len(expected_ids) * sale.pack_size, (
        f"{len(coupon_ids)} coupon rows ({len(set(coupon_ids))} distinct) for {len(expected_ids)} claims "
        f"of {sale.pack_size}"
    )
    assert sorted(coupon_ids) == expected_coupons
    owner = {r["claim_id"]: r["user_id"] for r in claims}
    for row in coupons:
        assert row["user_id"] == owner[row["claim_id"]] and row["version"] == 1, dict(row)
        assert row["coupon_id"].rsplit(".", 1)[0] == row["claim_id"]
    event_keys = Counter((r["coupon_id"], r["version"]) for r in events)
    assert len(events) == len(event_keys) == len(expected_coupons), (
        f"{len(events)} coupon events for {len(expected_coupons)} coupons"
    )
    assert set(event_keys) == {(c, 1) for c in expected_coupons}
    assert {r["type"] for r in events} == {"delivered"}

    # Redis: the stock taken is the acknowledged claims; per-user and per-device counts match the ledger.
    keys = KEYS.activity(sale.activity_id)
    stock_left, taken = await activity_counts(redis, sale)
    assert stock_left + len(acked) == sale.stock, (stock_left, len(acked), sale.stock)
    assert taken == len(acked), (taken, len(acked))
    redis_users = await counts_hash(redis, keys.user_counts)
    ledger_users = Counter(r["user_id"] for r in claims if r["claim_id"] not in ledger_only)
    assert redis_users == dict(ledger_users), _diff(redis_users, ledger_users)
    redis_devices = await counts_hash(redis, keys.device_counts)
    ledger_devices = Counter(r["device_id"] for r in claims if r["claim_id"] not in ledger_only)
    assert redis_devices == dict(ledger_devices), _diff(redis_devices, ledger_devices)
    assert max(ledger_users.values(), default=0) <= sale.per_user_limit

    # Wallets: every coupon of the sale once, in its owner's bucket and index.
    wallet_coupons: Counter[str] = Counter()
    for wallet in KEYS.wallet_partitions():
        for coupon_id, raw in strs(await redis.hgetall(f"{wallet.tag}:coupons")).items():
            if msgspec.json.decode(raw).get("activity") == sale.activity_id:
                wallet_coupons[coupon_id] += 1
                owner_id = owner[coupon_id.rsplit(".", 1)[0]]
                assert KEYS.wallet(owner_id).tag == wallet.tag, (coupon_id, wallet.tag)
    assert sorted(wallet_coupons) == expected_coupons, "wallets in Redis differ from the ledger's coupons"
    if load.keyed:
        assert idempotency == len(acked), (idempotency, len(acked))

    # Streams: nothing pending or undelivered, nothing dead-lettered; every partition's mark is its seq.
    streams = await registered_streams(database_url)
    assert await stream_backlog(redis, streams) == {}
    dead = await dead_letter_counts(redis, database_url)
    assert sum(dead.values()) == allow_dead_letters, {k: v for k, v in dead.items() if v}
    for stream in streams:
        partition = partition_of_stream(stream)
        seq = int(await redis.get(f"{partition}:seq") or 0)
        assert marks.get(partition, 0) == seq, (partition, marks.get(partition), seq)
    return Ledger(len(claims), len(coupons))


@dataclass(frozen=True)
class Consistency:
    rows: int
    users: int
    stock_left: int
    taken: int


async def assert_consistent(redis: Redis, database_url: str, sale: Sale) -> Consistency:
    """After a full drain, for a sale some of whose acknowledged claims may be lost: no unit sold twice (each
    claim holds its own ordinal), no oversell, no user above its limit, nothing in ``conflicts``, Redis's stock,
    taken and per-user counts equal the ledger's, and no partition's seq behind the ledger's mark."""
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
    stock_left, taken = await activity_counts(redis, sale)
    assert taken == len(rows), f"Redis taken {taken}, ledger {len(rows)} claims"
    assert stock_left + taken == sale.stock, (stock_left, taken, sale.stock)
    redis_users = await counts_hash(redis, KEYS.activity(sale.activity_id).user_counts)
    assert redis_users == dict(per_user), "per-user counts: " + _diff(redis_users, per_user)
    behind = await seqs_behind(redis, database_url)
    assert not behind, f"partitions behind the ledger: {behind}"
    return Consistency(len(rows), len(per_user), stock_left, taken)


def strs(fields: Mapping[Any, Any]) -> dict[str, str]:
    """A hash or entry as the decoding client returns it, typed (redis-py types values as bytes | str)."""
    return {str(k): str(v) for k, v in fields.items()}


def _diff(redis_side: Mapping[str, int], ledger_side: Mapping[str, int]) -> str:
    keys = set(redis_side) | set(ledger_side)
    differ = {
        k: (redis_side.get(k), ledger_side.get(k))
        for k in sorted(keys)
        if redis_side.get(k) != ledger_side.get(k)
    }
    return f"{len(differ)} differ (redis, ledger): {dict(list(differ.items())[:10])}"
