"""The idle phase: what a deployment costs when nothing happens. ``--idle-activities`` ended activities (1,000),
each with a few claims persisted, are made once, in the first round that runs the phase: created, granted to
``IDLE_GRANTS`` users and ended through the admin API, then drained into Postgres by a worker (every stream
entry acknowledged). Each round then starts a worker and a gateway, each its own process as ``claimgate worker``
and ``claimgate serve`` run them, waits ``--idle-settle`` seconds (start-up: groups checked, pending reads from
``0``, a first trim of every stream), and reads each process tree's CPU seconds from /proc over
``--idle-seconds``: CPU seconds per wall second, as a percentage of one core."""

from __future__ import annotations

import asyncio
import time

import httpx

from gateway.settings import PREFIX
from loadtest.bench import servers
from loadtest.bench.catalog import DAY
from loadtest.bench.checks import wait_drained, wait_settled
from loadtest.bench.procs import CpuWatch
from loadtest.bench.results import Figure, Phase
from loadtest.bench.session import Session

IDLE_GRANTS = 3  # claims persisted per ended activity
CONCURRENCY = 16  # admin calls in flight while the activities are made
SETTLE_SECONDS = 60  # for the drain's worker to acknowledge the last entries


async def _make_one(client: httpx.AsyncClient, template: str, n: int, now: int) -> str:
    body = {
        "name": f"idle {n}",
        "pack": [{"template_id": template, "count": 1}],
        "starts_at": now - 60,
        "ends_at": now + DAY,
        "stock": IDLE_GRANTS,
        "per_user_limit": 1,
    }
    reply = await client.post("/v1/admin/activities", json=body)
    if reply.status_code != 201:
        raise RuntimeError(f"creating an idle activity answered {reply.status_code}: {reply.text}")
    activity = str(reply.json()["id"])
    users = [f"idle-{n}-{i}" for i in range(IDLE_GRANTS)]
    reply = await client.post(f"/v1/admin/activities/{activity}/grants", json={"user_ids": users})
    granted = (
        [r for r in reply.json().get("results", []) if "claim_id" in r] if reply.status_code == 200 else []
    )
    if len(granted) != IDLE_GRANTS:
        raise RuntimeError(f"granting on an idle activity answered {reply.status_code}: {reply.text}")
    reply = await client.post(f"/v1/admin/activities/{activity}/end")
    if reply.status_code != 200:
        raise RuntimeError(f"ending an idle activity answered {reply.status_code}: {reply.text}")
    return activity


async def make_ended(url: str, api_key: str, count: int) -> list[str]:
    """``count`` activities, each granted to ``IDLE_GRANTS`` users then ended; their ids."""
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": api_key}, timeout=30) as client:
        body = {"name": "idle 1 off", "kind": "cash", "amount_off": 100, "valid_days": 7}
        reply = await client.post("/v1/admin/templates", json=body)
        if reply.status_code != 201:
            raise RuntimeError(f"creating the idle template answered {reply.status_code}: {reply.text}")
        template, now = str(reply.json()["id"]), int(time.time())
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(n: int) -> str:
            async with gate:
                return await _make_one(client, template, n, now)

        return list(await asyncio.gather(*(one(n) for n in range(count))))


def prepare(s: Session) -> None:
    """The ended activities, made and drained once per run."""
    count = s.opt("idle_activities")
    gateway = s.start_gateway(s.primary)
    api_key = s.env[PREFIX + "API_KEYS"].split(",")[0].split(":", 1)[1]
    s.say(f"idle: making {count:,} activities, {IDLE_GRANTS} grants each, then ending them")
    try:
        s.idle = asyncio.run(make_ended(gateway.url, api_key, count))
    finally:
        s.stop("gateway")
    s.say("idle: a worker drains their claims into Postgres")
    s.worker = servers.start_worker(s.env, s.dir / "worker-idle-drain.log", s.pidfile, s.code)
    try:
        expected = dict.fromkeys(s.idle, IDLE_GRANTS)
        rows = asyncio.run(wait_drained(s.pg.url, expected, float(s.opt("drain_timeout"))))
        left = wait_settled(s.rd, SETTLE_SECONDS)
    finally:
        s.stop("worker")
    short = sum(IDLE_GRANTS - n for n in rows.values() if n < IDLE_GRANTS)
    if short or left:
        raise RuntimeError(f"idle: {short} grants not persisted, {left} stream entries unacknowledged")


def idle_phase(s: Session) -> None:
    if not s.idle:
        prepare(s)
    settle, seconds = s.opt("idle_settle"), s.opt("idle_seconds")
    s.say(f"idle: a worker and a gateway with {len(s.idle):,} ended activities; {settle} s to settle")
    s.worker = servers.start_worker(s.env, s.dir / f"worker-idle-{s.run}.log", s.pidfile, s.code)
    try:
        gateway = s.start_gateway(s.primary)
        time.sleep(settle)
        with CpuWatch(s.roots(gateway)) as cpu:
            time.sleep(seconds)
    finally:
        s.stop("gateway")
        s.stop("worker")
    phase = Phase("idle", "idle worker and gateway", cpu.seconds, cpu.used, "none", 0, 0.0, False)
    s.record(cpu, phase)
    detail = (
        f"CPU seconds per wall second of the {{}} process tree over {cpu.seconds:.1f} s after {settle} s to"
        f" settle; {len(s.idle):,} ended activities with {IDLE_GRANTS} claims each persisted, every entry"
        " acknowledged; nothing else running but Valkey and Postgres"
    )
    for name, root, label in (
        ("worker", "worker", "`claimgate worker`"),
        ("gateway", "app", "`claimgate serve` (granian parent and workers)"),
    ):
        share = cpu.used[root] / cpu.seconds * 100
        title = f"idle {name}, {len(s.idle):,} ended activities"
        s.figure(Figure(f"idle_{name}", title, share, "% of a core", detail.format(label)))
        s.say(f"idle {name}: {share:.2f}% of a core")
