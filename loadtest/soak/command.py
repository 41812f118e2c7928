"""``claimgate soak``: the retention soak (loadtest/soak/run.py), not part of the test suite; its figures go to
docs/soak.md (and the JSON beside the work directory)."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtest.soak.run import RETENTION, Soak, run_soak

ROOT = Path(__file__).resolve().parents[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--claims", type=int, default=1_000_000, help="claims in all (default 1,000,000)")
    parser.add_argument("--activities", type=int, default=1000, help="short activities sharing them")
    parser.add_argument(
        "--users", type=int, default=200_000, help="distinct users the claims are spread over"
    )
    parser.add_argument("--report", type=Path, default=ROOT / "docs" / "soak.md", help="where the figures go")


def run(args: argparse.Namespace) -> int:
    if args.claims % args.activities or args.claims // args.activities > args.users:
        raise SystemExit("claimgate soak: --claims must be a multiple of --activities, each within --users")
    with tempfile.TemporaryDirectory(prefix="claimgate-soak-") as workdir:
        soak = Soak(args.claims, args.activities, args.users, Path(workdir), say)
        began = time.monotonic()
        figures = run_soak(soak)
    figures["seconds"] = round(time.monotonic() - began)
    figures["shape"] = {"claims": args.claims, "activities": args.activities, "users": args.users}
    args.report.write_text(report(figures))
    print(json.dumps(figures, indent=2))
    say(f"figures written to {args.report}")
    met = figures["verdict"]["met"] and not any(figures["sample"]["differ"].values())
    return 0 if met and figures["keyed"]["asked"] == figures["keyed"]["first_answer"] else 1


def say(line: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {line}", flush=True)


def report(f: dict[str, Any]) -> str:
    start, peak, end, sample = f["start"], f["peak"], f["end"], f["sample"]
    shape = f["shape"]
    rows = [
        ("at the start", start),
        ("with every coupon in Redis", peak),
        ("after the sweeps", end),
    ]
    table = "\n".join(
        f"| {name} | {m['used']:,} | {m['keys']:,} | {m['expiring_keys']:,} | {m['expiring_bytes']:,} |"
        f" {m['used'] - m['expiring_bytes']:,} |"
        for name, m in rows
    )
    differ = ", ".join(f"{k}: {len(v)}" for k, v in sample["differ"].items())
    left = "\n".join(
        f"| `{pattern}` | {n:,} | {size:,} |"
        for pattern, (n, size) in sorted(end["patterns"].items(), key=lambda item: -item[1][1])
    )
    lut = "overhead.db.hashtable.lut"
    return f"""# The retention soak

`claimgate soak` ({shape["claims"]:,} claims over {shape["activities"]:,} activities, {shape["users"]:,} users,
retention {RETENTION:,} s, the shortest allowed), written by the last run; {f["seconds"]:,} s in all.

Claims: {f["claims"]["made"]:,} in {f["claims"]["seconds"]} s ({f["claims"]["per_second"]:,}/s, two client processes,
`ClaimService` without HTTP). Then this process's clock was moved past every activity's end and every coupon's
validity (the expiry sweep), and past the retention (the wallet retention and retire sweeps, repeated until a pass
did nothing, then the streams trimmed): {f["sweeps"]["coupons_archived"]:,} coupons archived,
{f["sweeps"]["activities_retired"]:,} activities retired, {f["sweeps"]["entries_trimmed"]:,} stream entries trimmed,
in {f["sweeps"]["seconds"]} s.

| Redis | used_memory (B) | keys | keys with a TTL | their bytes | used without them (B) |
|---|---|---|---|---|---|
{table}

Keys with a TTL (`EX`: keyed claims' idempotency records) follow Redis's clock, not the moved one: counted apart.
Redis after the sweeps, without them, against the start: {f["verdict"]["growth"]:+.2%}
({"within" if f["verdict"]["met"] else "NOT within"} the 10% the issue asks).

What Redis holds after the sweeps, by key pattern (MEMORY USAGE):

| pattern | keys | bytes |
|---|---|---|
{left}

The keyspace's per-slot tables (MEMORY STATS `{lut}`): {start["stats"].get(lut, 0):,} B at the start,
{end["stats"].get(lut, 0):,} B after the sweeps (a slot that holds any key keeps its table).

Sample read before and after the retention sweeps: {sample["users"]} users' expired wallets ({sample["coupons"]:,}
coupons, every page), {sample["activities"]} activities' stats, {sample["histories"]} coupons' histories; answers
that differ: {differ}. Keyed claims asked again after the sweeps: {f["keyed"]["first_answer"]:,} of
{f["keyed"]["asked"]:,} got their first answer.
"""
