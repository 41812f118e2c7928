"""The fault harness: real gateway and worker processes against the test servers, a bounded claim loader over
HTTP, and the exactly-once check that ends every fault test.

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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
from redis.asyncio import Redis

from gateway.devstack.pidfile import PidFile, free_port
from gateway.keys import KeySpace, Partition, partition_of_stream
from tests.conftest import API_KEY, ROOT, settings_env
from tests.helpers import token

CLAIMGATE = [sys.executable, "-m", "gateway.cli"]
ADMIN = {"X-API-Key": API_KEY}
WALLET_BUCKETS, CODE_BUCKETS = 8, 4  # as tests.conftest.settings_env sets them
KEYS = KeySpace(WALLET_BUCKETS, CODE_BUCKETS)
READY_SECONDS = 30.0
DRAIN_SECONDS = 90.0
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
        return self.start("worker", name, [*CLAIMGATE, "worker"], worker_env, "gateway.cli worker")

    def gateway_process(self, env: Mapping[str, str], port: int, name: str = "gw") -> Proc:
        command = [*CLAIMGATE, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        # "--port N" is in the command line both before and after `serve` execs granian.
        return self.start("gateway", name, command, env, f"--port {port}")

    async def gateway(self, env: Mapping[str, str], port: int | None = None, name: str = "gw") -> Gateway:
        port = port or free_port()
        proc = self.gateway_process(env, port, name)
        gateway = Gateway(f"http://127.0.0.1:{port}", port, proc)
        await wait_ready(gateway)
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


async def wait_ready(gateway: Gateway, within: float = READY_SECONDS) -> None:
    """GET /readyz answers 200 with the fence open."""
    deadline = time.monotonic() + within
    last = ""
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            if not gateway.proc.alive():
                raise AssertionError(
                    f"the gateway exited with {gateway.proc.returncode}\n{gateway.proc.tail()}"
                )
            try:
                reply = await http.get(f"{gateway.url}/readyz")
                if reply.status_code == 200 and reply.json().get("fence") == "open":
                    return
                last = reply.text
            except httpx.HTTPError as exc:
                last = repr(exc)
            await asyncio.sleep(0.1)
    raise AssertionError(f"the gateway was not ready within {within}s: {last}\n{gateway.proc.tail()}")


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
    key: str  # the Idempotency-Key when the load is keyed


def plan(users: int, *, prefix: str = "u") -> list[Request]:
    """Each user claims once; every 5th user a second time and every 20th a third time (after everyone's
    first), so per-user counts of 1 and 2 and ``limit_reached`` refusals (with a per-user limit of 2) occur."""
    names = [f"{prefix}{i:05d}" for i in range(users)]
    requests = [Request(u, f"d-{u}", f"k1-{u}") for u in names]
    requests += [Request(u, f"d-{u}", f"k2-{u}") for u in names[::5]]
    requests += [Request(u, f"d-{u}", f"k3-{u}") for u in names[::20]]
    return requests


@dataclass(frozen=True)
class Acked:
    user: str
    device: str
    body: str  # the 201 body as sent


@dataclass(frozen=True)
class Refusal:
    user: str
    status: int
    body: str
    retry_after: str | None

    @property
    def code(self) -> str:
        try:
            decoded = msgspec.json.decode(self.body)
        except msgspec.DecodeError:
            return f"<not JSON: {self.body[:80]!r}>"
        return str(decoded.get("error")) if isinstance(decoded, dict) else f"<{decoded!r}>"


@dataclass
class Load:
    """A bounded claim load: ``requests`` sent with ``concurrency`` in flight, at most ``rate`` per second.

    Every 201 answer is an acknowledged claim (``acked``: claim id -> user, device, body); every other answer is
    recorded with its body. A transport error (no answer: the gateway is away) is counted; with ``retry`` the
    same request (same Idempotency-Key, so a claim that ran answers as a replay) is sent again until answered,
    else it is recorded in ``unanswered`` (such a claim may or may not have run)."""

    base_url: str
    activity_id: str
    requests: list[Request]
    concurrency: int = 32
    rate: float | None = None
    keyed: bool = False
    retry: bool = False
    acked: dict[str, Acked] = field(default_factory=dict)
    refusals: list[Refusal] = field(default_factory=list)
    transport_errors: Counter[str] = field(default_factory=Counter)
    unanswered: list[Request] = field(default_factory=list)
    answered: int = 0
    acked_after_error: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    _next: int = 0

    @property
    def done(self) -> bool:
        return self.finished_at > 0

    @property
    def seconds(self) -> float:
        return (self.finished_at or time.monotonic()) - self.started_at

    def refusal_codes(self) -> Counter[tuple[int, str]]:
        return Counter((r.status, r.code) for r in self.refusals)

    def summary(self) -> str:
        return (
            f"{len(self.requests)} requests in {self.seconds:.1f}s: {len(self.acked)} acked, refusals "
            f"{dict(self.refusal_codes())}, transport errors {dict(self.transport_errors)}, "
            f"unanswered {len(self.unanswered)}"
        )

    async def run(self) -> Load:
        self.started_at = time.monotonic()
        await asyncio.gather(*(self._sender() for _ in range(self.concurrency)))
        self.finished_at = time.monotonic()
        return self

    async def _sender(self) -> None:
        # A client (one connection) per sender: httpcore's shared pool costs O(connections) per request.
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=self.base_url, limits=limits, timeout=15) as http:
            await self._send_all(http)

    async def _send_all(self, http: httpx.AsyncClient) -> None:
        url = f"/v1/activities/{self.activity_id}/claim"
        while self._next < len(self.requests):
            index = self._next
            self._next += 1
            if self.rate:
                delay = self.started_at + index / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            request = self.requests[index]
            headers = {"Authorization": f"Bearer {token(request.user, request.device)}"}
            if self.keyed:
                headers["Idempotency-Key"] = request.key
            failed_before = False
            while True:
                try:
                    reply = await http.post(url, headers=headers)
                except httpx.TransportError as exc:
                    self.transport_errors[type(exc).__name__] += 1
                    if self.retry and self.keyed:
                        failed_before = True
                        await asyncio.sleep(0.1)
                        continue
                    self.unanswered.append(request)
                    break
                self._record(request, reply, failed_before)
                break

    def _record(self, request: Request, reply: httpx.Response, failed_before: bool) -> None:
        self.answered += 1
        if reply.status_code == 201:
            claim_id = reply.json()["claim_id"]
            assert claim_id not in self.acked, f"claim id {claim_id} answered twice"
            self.acked[claim_id] = Acked(request.user, request.device, reply.text)
            self.acked_after_error += failed_before
        else:
            self.refusals.append(
                Refusal(request.user, reply.status_code, reply.text, reply.headers.get("retry-after"))
            )


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


def assert_no_server_errors(load: Load, *, allow_overloaded: bool = False) -> None:
    """No 5xx at all, or (``allow_overloaded``) only 503 ``overloaded`` with a Retry-After header."""
    bad = [
        r
        for r in load.refusals
        if r.status >= 500
        and not (allow_overloaded and r.status == 503 and r.code == "overloaded" and r.retry_after)
    ]
    assert not bad, f"{len(bad)} server errors, e.g. {bad[:3]}; {load.summary()}"


def assert_only_expected_refusals(load: Load) -> None:
    """Every answer other than 201 is a refusal the sale explains: 409 sold out or past the per-user limit."""
    unexpected = [r for r in load.refusals if (r.status, r.code) not in EXPECTED_REFUSALS]
    assert not unexpected, (
        f"unexpected answers {Counter((r.status, r.code) for r in unexpected)}: {unexpected[:3]}"
    )


# --- streams -----------------------------------------------------------------------------------------------


async def registered_streams(database_url: str) -> list[str]:
    """The streams registered in the ledger, activity streams first (a ``claimed`` entry is acknowledged only
    after its ``delivered`` entry is in a wallet stream, so reading activity streams first sees every entry)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT stream, kind FROM streams")
    finally:
        await conn.close()
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


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def wait_drained(
    redis: Redis, database_url: str, workers: list[Proc], within: float = DRAIN_SECONDS
) -> None:
    """Until every registered stream's group has nothing pending and nothing undelivered, twice in a row."""
    deadline = time.monotonic() + within
    clean_rounds = 0
    behind: dict[str, tuple[int, int]] = {}
    while clean_rounds < 2:
        for worker in workers:
            assert worker.alive(), f"a worker exited with {worker.returncode}\n{worker.tail()}"
        streams = await registered_streams(database_url)
        behind = await stream_backlog(redis, streams)
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


# --- the exactly-once check --------------------------------------------------------------------------------


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
        marks = {
            r["partition"]: r["seq"] for r in await conn.fetch("SELECT partition, seq FROM partition_marks")
        }
        conflicts = await conn.fetch("SELECT partition, entry_id, reason FROM conflicts")
    finally:
        await conn.close()

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
    assert not conflicts, (
        f"{len(conflicts)} entries the ledger's checks refused, e.g. {[dict(r) for r in conflicts[:3]]}"
    )
    # Each claim holds its own unit of the stock: ordinals 1..granted, none twice, none skipped.
    ordinals = sorted(r["ordinal"] for r in claims if r["claim_id"] in acked)
    assert ordinals == list(range(1, len(acked) + 1)), "units (ordinals) are not exactly 1..granted"
    for row in claims:
        answer = acked.get(row["claim_id"])
        if answer is None:
            assert row["user_id"] == ledger_only[row["claim_id"]]
            continue
        assert (row["user_id"], row["device_id"], row["mode"]) == (answer.user, answer.device, "claim"), row
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
    stock_left, taken = (int(str(v)) for v in await redis.hmget(keys.config, ["stock_left", "taken"]))
    assert stock_left + len(acked) == sale.stock, (stock_left, len(acked), sale.stock)
    assert taken == len(acked), (taken, len(acked))
    redis_users = {str(u): int(n) for u, n in (await redis.hgetall(keys.user_counts)).items()}
    ledger_users = Counter(r["user_id"] for r in claims if r["claim_id"] not in ledger_only)
    assert redis_users == dict(ledger_users), _diff(redis_users, ledger_users)
    redis_devices = {str(d): int(n) for d, n in (await redis.hgetall(keys.device_counts)).items()}
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


@dataclass(frozen=True)
class Reconciled:
    code: int
    output: str

    @property
    def differences(self) -> list[str]:
        return [
            line.removeprefix("difference: ")
            for line in self.output.splitlines()
            if line.startswith("difference: ")
        ]

    @property
    def repaired(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.startswith("repaired: ")]


async def run_reconcile(env: Mapping[str, str]) -> Reconciled:
    result = await asyncio.to_thread(
        subprocess.run,
        [*CLAIMGATE, "reconcile"],
        env=dict(env),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Reconciled(result.returncode, result.stdout + result.stderr)


async def assert_reconciled(env: Mapping[str, str]) -> Reconciled:
    """``claimgate reconcile`` finds no difference between Redis and the ledger (exit 0; 1 = differences), and
    nothing half-done to finish (after a full drain there is none)."""
    found = await run_reconcile(env)
    assert found.code == 0, f"claimgate reconcile exited with {found.code}:\n{found.output}"
    assert not found.repaired, found.output
    return found
