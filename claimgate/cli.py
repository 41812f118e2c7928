"""``claimgate``: one console command with subcommands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from gateway.settings import PREFIX, Settings, SettingsError, load_settings


def _up(args: argparse.Namespace) -> int:
    from gateway.devstack.demo import run_flash_sale
    from gateway.devstack.stack import start_stack

    stack = start_stack(Path(args.workdir), gateway_port=args.port)
    try:
        env = stack.env
        api_key = next(iter(load_settings(env).auth.api_keys))
        print("claimgate is up")
        print(f"  gateway   {stack.gateway_url}   (OpenAPI: {stack.gateway_url}/schema/openapi.json)")
        print(f"  ops       {stack.ops_url}   (detailed readiness: {stack.ops_url}/readyz; loopback only)")
        print(f"  redis     {env[PREFIX + 'REDIS_URL']}")
        print(f"  postgres  {env[PREFIX + 'DATABASE_URL']}")
        print(f"  {PREFIX}JWT_SECRET={env[PREFIX + 'JWT_SECRET']}")
        print(f"  {PREFIX}API_KEYS={env[PREFIX + 'API_KEYS']}")
        print(f"  {PREFIX}SERVICE_KEYS={env[PREFIX + 'SERVICE_KEYS']}")
        print(f"  logs in {args.workdir}/", flush=True)
        if args.users:
            report = asyncio.run(
                run_flash_sale(
                    stack.gateway_url,
                    api_key,
                    env[PREFIX + "JWT_SECRET"],
                    env[PREFIX + "DATABASE_URL"],
                    users=args.users,
                    stock=args.stock,
                )
            )
            print("\n".join(report.lines()), flush=True)
            if report.granted != min(args.users, args.stock) or report.claims_rows != report.granted:
                print("the demo did not come out as it must: see the logs", file=sys.stderr)
                return 1
        if args.once:
            return 0
        print("serving; Ctrl-C stops everything", flush=True)
        stop_signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(
            signal.SIG_BLOCK, stop_signals
        )  # delivered to sigwait, not their default action
        signal.sigwait(stop_signals)
        return 0
    finally:
        stack.stop()
        print("stopped every server this run started", flush=True)


def _serve(args: argparse.Namespace) -> int:
    from gateway.devstack.stack import GATEWAY_TARGET

    load_settings()  # fail here, naming the variable, rather than inside every granian worker
    command = [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--factory",
        "--loop",
        "uvloop",
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        str(args.workers),
        "--no-access-log",
        GATEWAY_TARGET,
    ]
    os.execv(sys.executable, command)


def _worker(_: argparse.Namespace) -> int:
    import uvloop

    from worker.consumer import run_worker

    settings = load_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop)

    uvloop.run(main())
    return 0


def _replay_dead(_: argparse.Namespace) -> int:
    from worker.consumer import start_consumer
    from worker.dead_letters import replay

    settings = load_settings()

    async def main() -> int:
        consumer = await start_consumer(settings)
        try:
            await consumer.refresh_streams()
            report = await replay(
                consumer.client,
                consumer.pool,
                consumer.streams,
                lambda entry: consumer.deliver_claims([entry]),
            )
        finally:
            await consumer.redis.close()
            await consumer.pool.close()
        print(f"dead letters replayed: {report.replayed}; still failing (kept): {report.still_failing}")
        return 0 if report.still_failing == 0 else 1

    return asyncio.run(main())


@contextlib.asynccontextmanager
async def _ledger_tools(settings: Settings, *, check_fence: bool) -> AsyncIterator[tuple[Any, Any, Any]]:
    """Clients, a Postgres pool and the key space for reconcile and restore; closed on the way out."""
    import asyncpg

    from gateway.keys import KeySpace
    from gateway.scripts import ledger_check
    from gateway.services import Clients

    clients = await Clients.open(settings)
    pool = await asyncpg.create_pool(settings.postgres.url, min_size=1, max_size=4, timeout=10)
    try:
        if check_fence:  # reconcile's repairs go through the fence; restore runs its own scripts past it
            await ledger_check.check(clients.control, pool, clients.fence)
        yield clients, pool, KeySpace(settings.redis.wallet_buckets, settings.redis.code_buckets)
    finally:
        await clients.close()
        await pool.close()


def _reconcile(args: argparse.Namespace) -> int:
    from worker.recovery.reconcile import Reconciler

    settings = load_settings()

    async def main() -> int:
        async with _ledger_tools(settings, check_fence=True) as (clients, pool, keyspace):
            report = await Reconciler(
                clients.control,
                clients.runner,
                pool,
                keyspace,
                settings.claim.idempotency_ttl_seconds,
                batch_grace=args.batch_grace,
            ).run(args.partition or None)
        print("\n".join(report.lines()), flush=True)
        return 1 if report.differences else 0

    return asyncio.run(main())


def _restore(args: argparse.Namespace) -> int:
    from worker.recovery.restore import restore

    settings = load_settings()

    async def main() -> int:
        async with _ledger_tools(settings, check_fence=False) as (clients, pool, keyspace):
            done = await restore(
                clients.control,
                pool,
                keyspace,
                named=args.partition or None,
                force=args.force,
                operator=args.operator,
                idempotency_ttl=settings.claim.idempotency_ttl_seconds,
            )
        for item in done:
            counts = ", ".join(f"{k} {v}" for k, v in item.counts.items())
            detail = (
                f" (seq {item.seq}{'; ' + counts if counts else ''})" if item.action == "restored" else ""
            )
            print(
                f"{item.partition}: {item.action}{detail}; {item.drained} stream entries drained", flush=True
            )
        print(f"restored {sum(1 for d in done if d.action == 'restored')} of {len(done)} partition(s)")
        return 0

    return asyncio.run(main())


def _migrate(_: argparse.Namespace) -> int:
    from gateway.migrate import migrate

    url = os.environ.get(PREFIX + "DATABASE_URL")
    if not url:
        raise SettingsError(f"{PREFIX}DATABASE_URL is required")
    applied = asyncio.run(migrate(url))
    print(f"migrations applied: {', '.join(applied) or 'none (up to date)'}")
    return 0


def _token(args: argparse.Namespace) -> int:
    from gateway.tokens import mint_user_token

    secret = os.environ.get(PREFIX + "JWT_SECRET", "")
    if len(secret.encode()) < 32:
        raise SettingsError(f"{PREFIX}JWT_SECRET must be set (at least 32 bytes) to mint tokens")
    tags = args.tags.split(",") if args.tags else None
    print(
        mint_user_token(
            secret, args.user, args.device, ttl_seconds=args.ttl, reg=args.reg, orders=args.orders, tags=tags
        )
    )
    return 0


def _soak(args: argparse.Namespace) -> int:
    from loadtest.soak.command import run

    return run(args)


def _benchmark(args: argparse.Namespace) -> int:
    from loadtest.bench.command import run_benchmark

    return run_benchmark(args)


def _add_load_tools(sub: Any) -> None:
    """The benchmark and the soak: loadtest/ ships with the source tree, not with every install."""
    benchmark = sub.add_parser(
        "benchmark", help="measure the claim path against its ceilings (docs/benchmark.md)"
    )
    with contextlib.suppress(ImportError):  # loadtest/ ships with the source tree, not with every install
        from loadtest.bench.command import add_arguments

        add_arguments(benchmark)
    benchmark.set_defaults(run=_benchmark)
    soak = sub.add_parser(
        "soak", help="the retention soak: a million claims, time moved past the retention (docs/soak.md)"
    )
    with contextlib.suppress(ImportError):
        from loadtest.soak.command import add_arguments as soak_arguments

        soak_arguments(soak)
    soak.set_defaults(run=_soak)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="claimgate", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "up", help="run the embedded stack (own Valkey and Postgres unless configured) + a demo"
    )
    up.add_argument("--workdir", default=".claimgate", help="where servers keep data, logs and the pidfile")
    up.add_argument("--port", type=int, default=None, help="gateway port (default: a free one)")
    up.add_argument("--users", type=int, default=1000, help="users racing in the demo sale (0: no demo)")
    up.add_argument("--stock", type=int, default=100, help="packs in the demo sale")
    up.add_argument("--once", action="store_true", help="stop everything after the demo instead of serving")
    up.set_defaults(run=_up)

    serve = sub.add_parser("serve", help="run the gateway under granian (settings from CLAIMGATE_*)")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(run=_serve)

    sub.add_parser("worker", help="drain the event streams into Postgres").set_defaults(run=_worker)
    sub.add_parser("migrate", help="apply migrations/*.sql to CLAIMGATE_DATABASE_URL").set_defaults(
        run=_migrate
    )
    sub.add_parser(
        "replay-dead",
        help="apply dead-lettered entries again (after a fix); each is written once and removed",
    ).set_defaults(run=_replay_dead)

    reconcile = sub.add_parser(
        "reconcile",
        help="compare Redis with the ledger per partition, report every difference, finish half-done work"
        " (exit 1 when a difference remains)",
    )
    reconcile.add_argument(
        "--partition", action="append", help="only this partition, e.g. {a:ID} (repeatable)"
    )
    reconcile.add_argument(
        "--batch-grace",
        type=int,
        default=300,
        help="seconds after which a code batch still not ready is half-done and voided (default 300)",
    )
    reconcile.set_defaults(run=_reconcile)

    restore = sub.add_parser(
        "restore",
        help="rebuild Redis state from the ledger for the partitions behind it (or the named ones);"
        " drains each partition's stream first",
    )
    restore.add_argument("--partition", action="append", help="only this partition, e.g. {a:ID} (repeatable)")
    restore.add_argument(
        "--force",
        action="store_true",
        help="rebuild even partitions level with the ledger (stop gateways first)",
    )
    restore.add_argument("--operator", default="restore", help="the name the restored events record")
    restore.set_defaults(run=_restore)

    token = sub.add_parser("token", help="mint a user token signed with CLAIMGATE_JWT_SECRET")
    token.add_argument("--user", required=True)
    token.add_argument("--device", required=True)
    token.add_argument("--ttl", type=int, default=3600)
    token.add_argument("--reg", type=int, default=None, help="registration time (unix seconds)")
    token.add_argument("--orders", type=int, default=None, help="completed orders")
    token.add_argument("--tags", default=None, help="comma-separated tags")
    token.set_defaults(run=_token)

    _add_load_tools(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except SettingsError as exc:
        print(f"claimgate: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
