"""The HTTP baselines of a round, each on the gateway's own granian command (read from the running gateway): the
bare ceiling (a raw ASGI app and a one-route litestar app answering a constant 201) and the naive Postgres app
(an UPDATE and an INSERT per claim), each started for the round and stopped after."""

from __future__ import annotations

import asyncio

import asyncpg

from gateway.ids import new_id
from loadtest.bench import naive, servers
from loadtest.bench.catalog import Activity
from loadtest.bench.closed_loop import Load, http_figure, http_phase, warm_up
from loadtest.bench.phases import IN_STOCK, activity_key
from loadtest.bench.results import Figure
from loadtest.bench.session import Session

BARE_APPS = (
    ("bare_asgi", "bare HTTP: raw ASGI app", "loadtest.bench.apps:raw_app"),
    ("bare_litestar", "bare HTTP: litestar, one route", "loadtest.bench.apps:litestar_app"),
)


def bare_app(s: Session, key: str, label: str, target: str) -> Figure:
    s.say(f"starting {label} on the gateway's granian command: {' '.join(s.flags)}")
    s.app = app = servers.start_app(key, target, s.flags, s.env, s.dir / f"{key}.log", s.pidfile)
    try:
        warm_up(s, app, "bare", label, s.opt("warmup"))
        load = Load(key, label, app, "bare", s.opt("duration"), frozenset({"201"}), one_token_each=False)
        return http_figure(s, key, label, http_phase(s, load))
    finally:
        s.stop("app")


def bare_phases(s: Session) -> None:
    """Both bare apps, and the faster of the two as the round's ceiling."""
    found = [bare_app(s, key, label, target) for key, label, target in BARE_APPS]
    best = max(found, key=lambda figure: figure.value or 0.0)
    s.figure(
        Figure(
            "bare",
            "bare HTTP ceiling (the faster of the two)",
            best.value,
            "req/s",
            best.label,
            best.generator_bound,
        )
    )


async def _prepare(database_url: str, stocks: dict[str, int]) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await naive.prepare(conn, stocks)
    finally:
        await conn.close()


def naive_phase(s: Session) -> None:
    suffix = new_id()
    warm = Activity(activity_key("naive_warm", s.run), f"naive-warm-{suffix}", IN_STOCK, 1, redis=False)
    claim = Activity(activity_key("naive_claim", s.run), f"naive-claim-{suffix}", IN_STOCK, 1, redis=False)
    s.naive += [warm, claim]
    asyncio.run(_prepare(s.pg.url, {warm.id: warm.stock, claim.id: claim.stock}))
    env = {**s.env, naive.POOL_ENV: str(s.opt("naive_pool"))}
    s.say("starting the naive baseline (litestar + asyncpg, one transaction per claim)")
    target = "loadtest.bench.naive:naive_app"
    s.app = app = servers.start_app("naive", target, s.flags, env, s.dir / "naive.log", s.pidfile)
    try:
        warm.granted = warm_up(s, app, warm.id, "naive", s.opt("warmup")).statuses.get("201", 0)
        load = Load("naive", "naive baseline, in stock", app, claim.id, s.opt("duration"), frozenset({"201"}))
        result = http_phase(s, load)
        claim.granted = result.statuses.get("201", 0)
        http_figure(
            s,
            "naive",
            "naive baseline (Postgres UPDATE + INSERT per claim)",
            result,
            f"; asyncpg pool {s.opt('naive_pool')} per worker",
        )
    finally:
        s.stop("app")
